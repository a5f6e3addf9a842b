#!/usr/bin/env bash
# Real faces: masks and sunglasses rendered on the real photographs that ship inside registry packages, the face
# detectors measured on them, and classifiers trained on them from scratch and from real ImageNet weights, scored on
# held-out people over three seeds (docs/real_photos.md shows what it printed).
#
#   bash recipes/real_faces.sh                 # data/real3, data/real3_face, data/real4; bench/real3, bench/real4
#   SEEDS="0" EPOCHS=2 bash recipes/real_faces.sh   # a quick look
#
# Steps: real_assets.py fetches the photos (insightface's t1, face-api's group photos, the astronaut) and
# torchvision's ImageNet MobileNetV2 body (inside the mask-recognition wheel); mask_faces.py renders the sets
# (28 people, 9 held out, the same in every set); benchmark_faces.py measures the detectors per class;
# benchmark_recipe.py trains ResNet-18 and MobileNetV2 from scratch and MobileNetV2 from the ImageNet weights (one
# run, and `--fold all`'s five fold runs predicted together), 8 epochs at 128x128, and scores the held-out people;
# compare.py draws their curves.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
SEEDS="${SEEDS:-0 1 2}"
EPOCHS="${EPOCHS:-8}"
CACHE="${MASKCLS_CACHE:-$HOME/.cache/maskcls}"
WEIGHTS="$CACHE/weights/mobilenet_v2.pth"

"$PYTHON" "$ROOT/real_assets.py"
"$PYTHON" "$ROOT/mask_faces.py" "$CACHE/people" data/real3 --classes correct,incorrect,none --renders 6 \
    --eval_people 0.33 --seed 0 --overwrite
"$PYTHON" "$ROOT/mask_faces.py" "$CACHE/people" data/real3_face --classes correct,incorrect,none --renders 6 \
    --eval_people 0.33 --seed 0 --framing face --faces_csv data/real3/faces.csv --overwrite
"$PYTHON" "$ROOT/mask_faces.py" "$CACHE/people" data/real4 \
    --classes face,masked_face,face_sunglasses,masked_face_sunglasses --renders 5 --eval_people 0.33 --seed 0 \
    --faces_csv data/real3/faces.csv --overwrite

for set in real3 real3_face real4; do
    echo "== detectors on $set"
    "$PYTHON" "$ROOT/benchmark_faces.py" "data/$set" --group_photos "$CACHE/people" --min_score 0.5
done

for set in real3 real4; do
    echo "== classifiers on $set, held-out people"
    rm -rf "bench/$set"
    # shellcheck disable=SC2086  # SEEDS is a list
    "$PYTHON" "$ROOT/benchmark_recipe.py" --data_dir "data/$set" --out "bench/$set" --resize 128 128 \
        --epochs "$EPOCHS" --seeds $SEEDS \
        --variant "resnet18 scratch=--model resnet18" \
        --variant "mobilenet_v2 scratch=--model torchvision:mobilenet_v2" \
        --variant "mobilenet_v2 imagenet=--model torchvision:mobilenet_v2 --pretrained_path $WEIGHTS" \
        --variant "mobilenet_v2 imagenet 5 folds=--model torchvision:mobilenet_v2 --pretrained_path $WEIGHTS --fold all"
    "$PYTHON" "$ROOT/compare.py" "bench/$set/model/resnet18_scratch_seed0" \
        "bench/$set/model/mobilenet_v2_scratch_seed0" "bench/$set/model/mobilenet_v2_imagenet_seed0" \
        --output "bench/$set/compare.png"
done
