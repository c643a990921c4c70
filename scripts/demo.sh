#!/usr/bin/env bash
# The whole pipeline on the toy world, on CPU:
#   1. stage one (Meta-AAFG) on a subset of the toy train split, with the seen toy detectors;
#   2. stage two: fine-tune the shipped toy codec at each quality with beta = 1 (MAA) and
#      beta = 0 (control: the same fine-tuning towards the original images);
#   3. evaluation of anchor (the shipped codec), control and MAA on toy validation images
#      with the seen and unseen toy detectors (configs/toy.yaml), real bitstreams, and on the
#      shifted toy domain (split val_shifted: an unseen image domain);
#   4. tables (printed; BD-rate against the anchor and against the control), the
#      generalization table (unseen models, unseen domain, unseen task: MAA against anchor and
#      control), plots, and a picture (Evaluation/visualize.py), all in $OUT.
#
# Needs the toy assets (assets/toy/, shipped; rebuilt by scripts/build_toy_assets.py).
# Sizes come from the environment (defaults: the few-minute demo):
#   DEMO_IMAGES   stage-one images from the toy train split, or "all"      (32)
#   DEMO_STEPS    stage-two fine-tuning steps per (quality, beta)          (40)
#   DEMO_VAL      toy validation images evaluated, or "all"                (100)
#   DEMO_SHIFTED  shifted-domain validation images evaluated, "all", or 0 (none)   (30)
#   DEMO_QUALITIES toy codec qualities                                      ("1 2 3")
#   DEMO_JOBS     processes at a time for stage one (shards) and stage two (1: progress bars
#                 on the terminal; more: one log per process in $OUT/logs)  (1)
#   DEMO_OUT      output folder                                            (runs/demo)
#   DEMO_SEEDS    stage-two seeds: each gives an MAA and a control codec; with two, seed 1's
#                 (maa_seed1, control_seed1) against seed 0's is the noise floor   ("0")
#   DEMO_STAGE_ONE_FLAGS  extra stage-one flags, e.g. "--smooth 15"         ("")
#   DEMO_BETA     MAA's beta                                                (1)
#   DEMO_PILLOW   Pillow codecs also evaluated and used as BD anchors, e.g. "webp jpeg" or
#                 "webp=10,30,50" (qualities; default evaluate.py's --pillow_qualities) ("")
# benchmarks/toy_benchmark.sh runs this at a larger scale. Every step resumes: a rerun skips
# finished stage-one images, finished trainings and finished evaluation points.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-runs/demo}
IMAGES=${DEMO_IMAGES:-32}
STEPS=${DEMO_STEPS:-40}
VAL=${DEMO_VAL:-100}
SHIFTED=${DEMO_SHIFTED:-30}
QUALITIES=${DEMO_QUALITIES:-"1 2 3"}
JOBS=${DEMO_JOBS:-1}
SEEDS=${DEMO_SEEDS:-0}
STAGE_ONE_FLAGS=${DEMO_STAGE_ONE_FLAGS:-}
BETA=${DEMO_BETA:-1}
PILLOW=${DEMO_PILLOW:-}
CONFIG=configs/toy.yaml

missing=()
for f in "$CONFIG" assets/toy/toy_yolov3.pt assets/toy/toy_faster_rcnn.pt assets/toy/toy_centernet.pt \
         assets/toy/toy_yolov8.pt; do
    [ -f "$f" ] || missing+=("$f")
done
for q in $QUALITIES; do
    [ -f "assets/toy/codec_q$q.pth.tar" ] || missing+=("assets/toy/codec_q$q.pth.tar")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "error: toy assets missing: ${missing[*]}" >&2
    echo "       build them with: $PY scripts/build_toy_assets.py   (CPU, about an hour on 2 cores)" >&2
    exit 1
fi

start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start )) s] $*"; }
mkdir -p "$OUT/logs"

# run_all NAME CMD... per line of stdin ("name|command"): at most $JOBS at a time. With one
# job the command's progress goes to the terminal; otherwise to $OUT/logs/NAME.log, with a
# line when each starts and ends. Fails (after the others finish) when any command fails.
run_all() {
    local failed=0 running=0 name cmd
    local -a names=() pids=()
    while IFS='|' read -r name cmd; do
        if [ "$JOBS" -le 1 ]; then
            bash -c "$cmd" < /dev/null || { echo "error: $name failed" >&2; return 1; }
            continue
        fi
        echo "   started $name (log $OUT/logs/$name.log)"
        OMP_NUM_THREADS=1 bash -c "$cmd" < /dev/null > "$OUT/logs/$name.log" 2>&1 &
        names+=("$name"); pids+=($!); running=$((running + 1))
        if [ "$running" -ge "$JOBS" ]; then
            wait "${pids[0]}" && echo "   finished ${names[0]}" || { echo "error: ${names[0]} failed; see $OUT/logs/${names[0]}.log" >&2; failed=1; }
            names=("${names[@]:1}"); pids=("${pids[@]:1}"); running=$((running - 1))
        fi
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" && echo "   finished ${names[$i]}" || { echo "error: ${names[$i]} failed; see $OUT/logs/${names[$i]}.log" >&2; failed=1; }
    done
    return $failed
}

limit=()
[ "$IMAGES" = all ] || limit=(--limit "$IMAGES")
step "stage one: Meta-AAFG on ${IMAGES} toy train images (seen: the toy config's model set), $JOBS process(es)"
for ((i = 0; i < JOBS; i++)); do
    echo "stage_one_shard$i|$PY MetaAAFG/train_meta_aafg.py --config $CONFIG --dataset toy --split train ${limit[*]} --batch_size 16 $STAGE_ONE_FLAGS --shard $i/$JOBS --save_path $OUT/augmented_data"
done | run_all

# codec_name KIND SEED: maa / control for seed 0, maa_seed1 / control_seed1 for seed 1, ...
codec_name() { [ "$2" = 0 ] && echo "$1" || echo "$1_seed$2"; }
anchor=()
for q in $QUALITIES; do anchor+=("assets/toy/codec_q$q.pth.tar"); done
step "stage two: fine-tune the toy codec at qualities $QUALITIES with beta $BETA (MAA) and 0 (control), seeds $SEEDS, $STEPS steps each"
for seed in $SEEDS; do
    for q in $QUALITIES; do
        for beta in "$BETA" 0; do
            name=$(codec_name "$([ "$beta" = 0 ] && echo control || echo maa)" "$seed")_q$q
            start_from="--checkpoint assets/toy/codec_q$q.pth.tar --quality $q --beta $beta --seed $seed"
            [ -f "$OUT/codecs/$name/last.pth.tar" ] && start_from="--resume $OUT/codecs/$name/last.pth.tar"
            # --max_steps ends the run; --epochs only has to be larger than it can take.
            echo "$name|$PY Compression/train_compression.py --config $CONFIG --dataset $OUT/augmented_data $start_from --epochs 100000 --max_steps $STEPS --save_dir $OUT/codecs/$name"
        done
    done
done | run_all
join() { local IFS=,; echo "$*"; }

val_limit=()
[ "$VAL" = all ] || val_limit=(--limit "$VAL")
codecs=("anchor=$(join "${anchor[@]}")")
for seed in $SEEDS; do
    for kind in control maa; do
        ckpts=()
        for q in $QUALITIES; do ckpts+=("$OUT/codecs/$(codec_name $kind "$seed")_q$q/last.pth.tar"); done
        codecs+=("$(codec_name $kind "$seed")=$(join "${ckpts[@]}")")
    done
done
# shellcheck disable=SC2206  # one word per Pillow codec
codecs+=($PILLOW)
step "evaluation: anchor, control and MAA ${PILLOW:+and $PILLOW }on ${VAL} toy validation images, seen and unseen detectors"
$PY Evaluation/evaluate.py --config "$CONFIG" --dataset toy --split val "${val_limit[@]}" \
    --codecs "${codecs[@]}" --out "$OUT/eval"

if [ "$SHIFTED" != 0 ]; then
    shifted_limit=()
    [ "$SHIFTED" = all ] || shifted_limit=(--limit "$SHIFTED")
    step "evaluation on the shifted toy domain (val_shifted, ${SHIFTED} images): the same codecs and detectors"
    $PY Evaluation/evaluate.py --config "$CONFIG" --dataset toy --split val_shifted "${shifted_limit[@]}" \
        --codecs "${codecs[@]}" --out "$OUT/eval_shifted"
fi

step "tables and plots"
$PY Evaluation/make_tables.py "$OUT"/eval/*.json --anchor anchor --out "$OUT/tables" --img_dir "$OUT" \
    > "$OUT/logs/make_tables.log"
# Against the control (with two seeds, control_seed1's row there is the control's noise floor),
# against seed 0's MAA (maa_seed1's row: MAA's noise floor) and against each Pillow codec.
anchors=(control)
[ "$(echo $SEEDS | wc -w)" -gt 1 ] && anchors+=(maa)
for pillow in $PILLOW; do anchors+=("${pillow%%=*}"); done  # webp=10,30 is labelled webp
for against in "${anchors[@]}"; do
    $PY Evaluation/make_tables.py "$OUT"/eval/*.json --anchor "$against" --out "$OUT/tables_vs_$against" --no_plots \
        >> "$OUT/logs/make_tables.log"
done
# The generalization table: MAA against anchor and control along each axis the paper names.
# The unseen task (instance segmentation) is the mask AP of configs/toy.yaml's task model
# (toy_mask_rcnn), with intervals from its per-image mask records.
axes=("unseen models=$OUT/eval:map-voc07:unseen-mean")
[ "$SHIFTED" != 0 ] && axes+=("unseen domain=$OUT/eval_shifted:map-voc07:all-mean")
axes+=("unseen task=$OUT/eval:mask-map-coco:toy_mask_rcnn")
$PY Evaluation/make_tables.py --generalization "${axes[@]}" --test maa --references anchor control \
    --out "$OUT/tables" >> "$OUT/logs/make_tables.log"
mid=$(echo $QUALITIES | awk '{print $(int((NF + 1) / 2))}')
$PY Evaluation/visualize.py --config "$CONFIG" --augmented_data "$OUT/augmented_data" \
    --anchor "assets/toy/codec_q$mid.pth.tar" --maa "$OUT/codecs/maa_q$mid/last.pth.tar" --out "$OUT/visual.png"

# The terminal gets the VOC07 mAP@0.5 tables; every protocol is in tables*/tables.md.
echo
cat "$OUT/tables/results_map-voc07.md"
echo
cat "$OUT/tables/bd_map-voc07.md"
echo
for against in "${anchors[@]}"; do
    cat "$OUT/tables_vs_$against/bd_map-voc07.md"
    echo
done
cat "$OUT/tables/generalization.md"
echo
echo "finished in $(( $(date +%s) - start )) s: tables (all protocols, CSV, LaTeX) in $OUT/tables/ and"
echo "$OUT/tables_vs_*/, plots $OUT/rate_*.png, picture $OUT/visual.png"
