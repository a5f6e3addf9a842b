#!/usr/bin/env bash
# Fast CPU recipe: a ResNet-18 from scratch on face crops with the winners' tricks for the imbalance and the 60+
# boundary -- weighted sampler, --old_age 58, focal loss, vertical cutmix -- trained on every fold and scored out of
# fold. train.py's defaults are this recipe on one fold; here every flag is spelt out.
#
#   SM_CHANNEL_TRAIN=data/train/images SM_MODEL_DIR=model bash recipes/fast_cpu.sh
#   CORRECTIONS=corrections.csv KFOLD=5 bash recipes/fast_cpu.sh --epochs 4    # later flags win
#
# Writes data/train/folds.csv, then model/fast_cpu/fold0..fold{KFOLD-1}, oof.csv and oof_metrics.json.
# Inference averages the fold models: SM_CHANNEL_MODEL=model/fast_cpu python inference.py
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"

"$PYTHON" "$ROOT/preprocess.py" --kfold "${KFOLD:-5}" ${CORRECTIONS:+--corrections "$CORRECTIONS"}
"$PYTHON" "$ROOT/train.py" --name fast_cpu --fold all \
    --model resnet18 --head multi --resize 128 96 --crop face --face_margin 0.4 --epochs 8 --batch_size 32 \
    --optimizer adamw --lr 3e-3 --scheduler onecycle \
    --sampler weighted --old_age 58 --criterion focal --focal_gamma 2 \
    --cutmix 0.5 --cutmix_mode vertical --cutmix_ratio 0.46 0.54 \
    "$@"
