#!/usr/bin/env bash
# The MAA ablation on the toy world: one factor at a time from the defaults. Each row reports
#   - transfer on clean images (benchmarks/meta_transfer.py on ABL_TRANSFER val images): the
#     unseen detectors' mean under the row's stage-one setting against the same-size random
#     and smooth controls;
#   - the row's fine-tuned codec against the beta = 0 control on decoded images (BD-mAP of the
#     seen and unseen means, BD-PSNR, BD-rate on the unseen mean), each with its paired
#     bootstrap interval (Evaluation/make_tables.py --anchor control);
#   - the noise floor: the control and the defaults fine-tuned again with another stage-two
#     seed (rows control_seed1 and defaults_seed1, against the control like every row);
#   - the share of the perturbation the row's codec learned to reproduce on its training
#     images, against the control (benchmarks/delta_share.py).
# Every row's stage two starts from the shipped toy codec, on the row's stage-one output of
# the first ABL_IMAGES toy train images (the control: the same images, target = original).
#
# Sizes and rows come from the environment (defaults: a screen of a few hours on 2 cores):
#   ABL_IMAGES     toy train images for stage one and stage two               (64)
#   ABL_STEPS      stage-two fine-tuning steps per (row, quality)              (300)
#   ABL_QUALITIES  toy codec qualities                                         ("2 5")
#   ABL_VAL        toy val images for the decoded-image evaluation             (100)
#   ABL_TRANSFER   toy val images for the clean-image transfer (0: skip it)    (100)
#   ABL_ROWS       rows to run, in this order (names below; the default order  (all)
#                  puts the reference and the noise floor first)
#   ABL_OUT        output folder                                               (runs/maa_ablation)
# Rows run one after the other; a rerun resumes (finished stage-one images, trainings,
# transfer files and evaluation points are kept), and the table $ABL_OUT/ablation.md is
# rewritten after every row, so a partial run still reports the rows it finished.
#
#   bash benchmarks/maa_ablation.sh
#   ABL_ROWS="control defaults meta_off" ABL_IMAGES=32 bash benchmarks/maa_ablation.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
OUT=${ABL_OUT:-runs/maa_ablation}
IMAGES=${ABL_IMAGES:-64}
STEPS=${ABL_STEPS:-300}
QUALITIES=${ABL_QUALITIES:-"2 5"}
VAL=${ABL_VAL:-100}
TRANSFER=${ABL_TRANSFER:-100}
CONFIG=configs/toy.yaml

# name | stage-one flags (the same flags for train_meta_aafg.py and meta_transfer.py) | beta | stage-two seed
ROWS_TABLE="control||0|0
defaults||1|0
control_seed1||0|1
meta_off|--meta off|1|0
eps16|--epsilon 16/255|1|0
smooth15|--smooth 15|1|0
diversity0.7|--diversity 0.7|1|0
beta2||2|0
beta8||8|0
beta0.5||0.5|0
defaults_seed1||1|1
sample_models2|--sample_models 2|1|0
delta_scale4|--delta_scale 4|1|0
codec_aware|--codec_aware assets/toy/codec_q3.pth.tar|1|0
codec_aware_diversity|--codec_aware assets/toy/codec_q3.pth.tar --diversity 0.7|1|0"
ALL_ROWS=$(echo "$ROWS_TABLE" | cut -d'|' -f1 | tr '\n' ' ')
ROWS=${ABL_ROWS:-$ALL_ROWS}

for name in $ROWS; do
    echo "$ROWS_TABLE" | grep -q "^$name|" || { echo "error: ABL_ROWS: unknown row '$name' (rows: $ALL_ROWS)" >&2; exit 2; }
done
for q in $QUALITIES; do
    [ -f "assets/toy/codec_q$q.pth.tar" ] || { echo "error: assets/toy/codec_q$q.pth.tar missing (scripts/build_toy_assets.py)" >&2; exit 1; }
done

start=$(date +%s)
step() { echo "== [$(( $(date +%s) - start )) s] $*"; }
mkdir -p "$OUT/logs" "$OUT/transfer"
# A stage-one setting's folder name: its flags, made file-name safe ("defaults" when none).
setting_key() { local k; k=$(echo "$1" | sed 's/^--//; s/ --/_/g; s/[^A-Za-z0-9._-]/-/g'); echo "${k:-defaults}"; }
# run LOG CMD...: the command's output goes to $OUT/logs/LOG.log; on failure, its tail.
run() {
    local log="$OUT/logs/$1.log"; shift
    "$@" > "$log" 2>&1 || { echo "error: failed, see $log:" >&2; tail -5 "$log" >&2; exit 1; }
}

summarize() {
    local results=("$OUT"/eval/*.json)
    [ -f "$OUT/eval/control.json" ] || return 0  # every BD is against the control
    run make_tables $PY Evaluation/make_tables.py "${results[@]}" --anchor control --out "$OUT/tables" --no_plots
    $PY benchmarks/ablation_table.py "$OUT" > "$OUT/ablation.md"
}

for name in $ROWS; do
    IFS='|' read -r _ flags beta seed <<< "$(echo "$ROWS_TABLE" | grep "^$name|")"
    key=$(setting_key "$flags")
    data="$OUT/stage_one/$key"
    grep -qs "^$name|" "$OUT/rows.txt" || echo "$name|$key|$flags|$beta|$seed" >> "$OUT/rows.txt"
    # shellcheck disable=SC2086  # $flags holds several words on purpose
    {
        step "row $name: stage one ($key) on $IMAGES toy train images"
        run "stage_one_$key" $PY MetaAAFG/train_meta_aafg.py --config "$CONFIG" --dataset toy --split train \
            --limit "$IMAGES" --batch_size 16 $flags --out "$data" --no_progress
        if [ "$TRANSFER" != 0 ] && [ "$beta" != 0 ] && [ ! -f "$OUT/transfer/$key.json" ]; then
            step "row $name: transfer on $TRANSFER clean toy val images"
            run "transfer_$key" $PY benchmarks/meta_transfer.py --config "$CONFIG" --limit "$TRANSFER" $flags \
                --out "$OUT/transfer/$key.json" --no_progress
        fi
    }
    ckpts=()
    for q in $QUALITIES; do
        dir="$OUT/codecs/${name}_q$q"
        ckpts+=("$dir/last.pth.tar")
        if [ -f "$dir/done" ]; then continue; fi
        step "row $name: stage two at quality $q, beta $beta, seed $seed, $STEPS steps"
        from=(--checkpoint "assets/toy/codec_q$q.pth.tar" --quality "$q" --overwrite)
        [ -f "$dir/last.pth.tar" ] && from=(--resume "$dir/last.pth.tar")
        # --max_steps ends the run; --epochs only has to be larger than it can take.
        run "stage_two_${name}_q$q" $PY Compression/train_compression.py --config "$CONFIG" --dataset "$data" \
            "${from[@]}" --beta "$beta" --seed "$seed" --epochs 100000 --max_steps "$STEPS" --out "$dir" --no_progress
        touch "$dir/done"
    done
    if [ "$beta" != 0 ]; then
        mkdir -p "$OUT/share"
        for q in $QUALITIES; do
            share="$OUT/share/${name}_q$q.json"
            [ -f "$share" ] || [ ! -f "$OUT/codecs/control_q$q/done" ] || \
                run "share_${name}_q$q" $PY benchmarks/delta_share.py --augmented "$data" \
                    --codec "$OUT/codecs/${name}_q$q/last.pth.tar" --reference "$OUT/codecs/control_q$q/last.pth.tar" \
                    --out "$share"
        done
    fi
    step "row $name: evaluation on $VAL toy val images"
    list=$(IFS=,; echo "${ckpts[*]}")
    run "evaluate_$name" $PY Evaluation/evaluate.py --config "$CONFIG" --dataset toy --split val --limit "$VAL" \
        --codecs "$name=$list" --out "$OUT/eval" --no_progress
    summarize
done
step "done: $OUT/ablation.md"
cat "$OUT/ablation.md"
