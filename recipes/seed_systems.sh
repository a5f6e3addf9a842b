#!/usr/bin/env bash
# The four other classifiers this toolkit was conceived from, each on its generated class-folder sample set:
# generate -> preprocess -> train (train.py's defaults) -> inference (photos sorted into predicted folders) ->
# evaluation (accuracy, macro F1, per-class table).
#
#   bash recipes/seed_systems.sh                       # all four, into data/<kind>, model/<kind>, output/<kind>
#   PEOPLE=30 bash recipes/seed_systems.sh --epochs 2  # smaller; later flags go to train.py
#
#   mask             mask / no_mask; 90/10 split (10 folds), best epoch by top-1 accuracy, as the seed validates
#   helmet           helmet / no_helmet; the same
#   mask_sunglasses  face / masked_face / face_sunglasses / masked_face_sunglasses
#   mask_3class      correct_mask / incorrect_mask / no_mask
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
PEOPLE="${PEOPLE:-60}"

run() {  # kind, kfold, train.py flags...
    local kind=$1 kfold=$2
    shift 2
    "$PYTHON" "$ROOT/generate_sample.py" --kind "$kind" --out "data/$kind" --people "$PEOPLE" --eval_people 20 \
        --overwrite
    "$PYTHON" "$ROOT/preprocess.py" --data_dir "data/$kind/train" --group_regex '^(\d+)_' --kfold "$kfold"
    rm -rf "model/$kind" "output/$kind" "sorted/$kind"
    "$PYTHON" "$ROOT/train.py" --data_dir "data/$kind/train" --model_dir model --name "$kind" "$@"
    "$PYTHON" "$ROOT/inference.py" --data_dir "data/$kind/eval" --model_dir "model/$kind" --output_dir "output/$kind" \
        --sort_into "sorted/$kind"
    echo "== $kind: held-out eval people"
    "$PYTHON" "$ROOT/evaluation.py" --truth "data/$kind/eval" --output_dir "output/$kind"
}

run mask 10 --select accuracy "$@"
run helmet 10 --select accuracy "$@"
run mask_sunglasses 5 "$@"
run mask_3class 5 "$@"
