#!/usr/bin/env bash
# The whole pipeline on the toy world, on CPU: stage one on a subset of the toy train split,
# stage two fine-tuning of the toy codec at each toy quality with beta = 1 (MAA) and
# beta = 0 (control), evaluation of anchor / control / MAA with the seen and unseen toy
# detectors on toy validation images, then tables and plots in runs/demo/.
#
# Needs the toy assets (assets/toy/, configs/toy.yaml): `python scripts/build_toy_assets.py`.
# Sizes can be changed through the environment: DEMO_IMAGES, DEMO_STEPS, DEMO_VAL, DEMO_OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-runs/demo}
IMAGES=${DEMO_IMAGES:-48}       # stage one: toy train images to augment
STEPS=${DEMO_STEPS:-60}         # stage two: fine-tuning steps per (quality, beta)
VAL=${DEMO_VAL:-100}            # evaluation: toy validation images
QUALITIES=${DEMO_QUALITIES:-"1 2 3"}
SEEN=toy_yolov3,toy_faster_rcnn,toy_centernet

missing=()
for f in configs/toy.yaml assets/toy/toy_yolov3.pt assets/toy/toy_faster_rcnn.pt assets/toy/toy_centernet.pt; do
    [ -f "$f" ] || missing+=("$f")
done
for q in $QUALITIES; do
    [ -f "assets/toy/codec_q$q.pth.tar" ] || missing+=("assets/toy/codec_q$q.pth.tar")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "error: the toy assets are not built yet (missing: ${missing[*]})." >&2
    echo "       Build them with: $PY scripts/build_toy_assets.py   (CPU, about an hour on 2 cores)" >&2
    exit 1
fi

start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start )) s)"; }

step "stage one: Meta-AAFG on $IMAGES toy train images"
$PY MetaAAFG/train_meta_aafg.py --config configs/toy.yaml --dataset toy --split train \
    --limit "$IMAGES" --batch_size 16 --save_path "$OUT/augmented_data"

maa=() control=() anchor=()
for q in $QUALITIES; do
    for beta in 1 0; do
        name=$([ "$beta" = 1 ] && echo maa || echo control)
        step "stage two: quality $q, beta $beta ($name), $STEPS steps"
        $PY Compression/train_compression.py --config configs/toy.yaml --dataset "$OUT/augmented_data" \
            --checkpoint "assets/toy/codec_q$q.pth.tar" --quality "$q" --beta "$beta" \
            --max_steps "$STEPS" --save_dir "$OUT/codecs/${name}_q$q"
    done
    maa+=("$OUT/codecs/maa_q$q/last.pth.tar")
    control+=("$OUT/codecs/control_q$q/last.pth.tar")
    anchor+=("assets/toy/codec_q$q.pth.tar")
done
join() { local IFS=,; echo "$*"; }

step "evaluation: anchor, control, MAA on $VAL toy validation images"
$PY Evaluation/evaluate.py --config configs/toy.yaml --dataset toy --split val --limit "$VAL" \
    --codecs "toy_base=$(join "${anchor[@]}")" "control=$(join "${control[@]}")" "maa=$(join "${maa[@]}")" \
    --out "$OUT/eval"

step "tables and plots"
$PY Evaluation/make_tables.py "$OUT"/eval/*.json --anchor toy_base --out "$OUT/tables" --img_dir "$OUT"
cat "$OUT/tables/tables.md"
echo
echo "demo finished in $(( $(date +%s) - start )) s; results in $OUT/ (seen detectors: $SEEN)"
