#!/usr/bin/env bash
# The winning team's GPU recipe: a pretrained EfficientNet-B4 at 380x380 on MTCNN face crops, with a strong augmentation, vertical
# cutmix (left and right halves of two people, split at 46-54% of the width), ages 58+ trained as 60+, focal loss,
# a weighted sampler, warmup + cosine, weight EMA, five folds (about an hour per fold on one modern GPU).
#
#   SM_CHANNEL_TRAIN=data/train/images SM_MODEL_DIR=model CORRECTIONS=corrections.csv bash recipes/winners_gpu.sh
#   bash recipes/winners_gpu.sh --pretrained_path efficientnet_b4.pth     # offline: local ImageNet weights
#
# Writes data/train/folds.csv, then model/effb4/fold0..fold4, oof.csv and oof_metrics.json.
# Inference averages the five fold models: SM_CHANNEL_MODEL=model/effb4 python inference.py
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"

"$PYTHON" "$ROOT/preprocess.py" --kfold "${KFOLD:-5}" ${CORRECTIONS:+--corrections "$CORRECTIONS"}
"$PYTHON" "$ROOT/train.py" --name effb4 --fold all \
    --model efficientnet_b4 --pretrained --resize 380 380 --crop face --face_margin 0.4 --batch_size 32 --valid_batch_size 128 \
    --augmentation StrongAugmentation --cutmix 0.5 --cutmix_mode vertical --cutmix_ratio 0.46 0.54 \
    --sampler weighted --old_age 58 --criterion focal --focal_gamma 2 \
    --optimizer adamw --lr 3e-4 --weight_decay 1e-2 --scheduler cosine --warmup_epochs 1 --epochs 15 \
    --ema 0.999 --clip_grad 5 --patience 5 \
    "$@"
