#!/usr/bin/env bash
# The mask/sunglasses seed's deployment bar: a 4-class face classifier (face, masked face, face with sunglasses,
# masked face with sunglasses) of at most 15 MB and under 6 ms per face on a CPU, quantized and in ONNX, with its
# accuracy on held-out people; then the classifier on a video stream.
#
#   bash recipes/deploy_mask_sunglasses.sh                # data/, model/, output/ under the current folder
#   PEOPLE=60 bash recipes/deploy_mask_sunglasses.sh --epochs 4   # smaller; later flags go to train.py
#
# generate -> preprocess (5 folds, photos of one person in one fold) -> train (ResNet-18 from scratch on face crops
# at 128x96, train.py's defaults) -> export.py (fp32, fp16, int8; the report says which meets the bar) ->
# inference.py --onnx on the held-out people with the int8 model -> evaluation -> stream.py on a clip of them.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
PEOPLE="${PEOPLE:-150}"
DATA=data/mask_sunglasses RUN=model/mask_sunglasses OUT=output/mask_sunglasses

"$PYTHON" "$ROOT/generate_sample.py" --kind mask_sunglasses --out "$DATA" --people "$PEOPLE" --eval_people 40 \
    --overwrite
"$PYTHON" "$ROOT/preprocess.py" --data_dir "$DATA/train" --group_regex '^(\d+)_' --kfold 5
rm -rf "$RUN" "$OUT"
"$PYTHON" "$ROOT/train.py" --data_dir "$DATA/train" --model_dir model --name mask_sunglasses "$@"
"$PYTHON" "$ROOT/export.py" "$RUN" --max_mb 15 --max_ms 6
"$PYTHON" "$ROOT/inference.py" --data_dir "$DATA/eval" --onnx "$RUN/model_int8.onnx" --output_dir "$OUT"
echo "== int8 ONNX model on the held-out people"
"$PYTHON" "$ROOT/evaluation.py" --truth "$DATA/eval" --output_dir "$OUT"
"$PYTHON" "$ROOT/stream.py" "$DATA/eval" --onnx "$RUN/model_int8.onnx" --fps 5 \
    --output_dir "$OUT/stream"
