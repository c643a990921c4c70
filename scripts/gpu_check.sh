#!/usr/bin/env bash
# A GPU self-check in a few minutes: every CUDA path of the pipeline once, with timings.
#
#   bash scripts/gpu_check.sh              # on the first CUDA GPU
#   bash scripts/gpu_check.sh --dry_run    # the same steps on CPU at toy sizes (CI runs this)
#
# Steps (each PASS or FAIL with its seconds, in one table at the end; exit 1 if any failed):
#   1. stage one under bf16 autocast on the zoo-size seen model set (yolov3, faster_rcnn,
#      centernet; random weights: speed and code paths only), mixed-size batches of 4;
#   2. stage two for a few steps under torchrun with one process: DDP on NCCL;
#   3. evaluation of that codec and JPEG with the toy detectors (real bitstreams);
#   4. the stage-one speed benchmark (benchmarks/bench_meta_aafg.py), at batch 1 and 4 on
#      mixed sizes, written to OUT/bench_meta_aafg.json;
#   5. its overhead ratio and the host synchronisations of one gradient pass per model (the
#      libraries' own, counted by torch's sync debug mode), OUT/bench_overhead.json.
# Environment: GPU_CHECK_OUT (runs/gpu_check), PYTHON (.venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${GPU_CHECK_OUT:-runs/gpu_check}
DRY=0
for arg in "$@"; do
    case $arg in
        --dry_run) DRY=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $arg (--dry_run, --help)" >&2; exit 2 ;;
    esac
done
if [ $DRY = 1 ]; then
    DEVICE=cpu; IMAGES=2; STEPS=(--meta_steps 1 --inner_steps 1); TRAIN_STEPS=3; BENCH_SIZES=64x80,80x64
    SEEN=toy_yolov3,toy_faster_rcnn,toy_centernet
else
    DEVICE=cuda; IMAGES=16; STEPS=(--meta_steps 2 --inner_steps 2); TRAIN_STEPS=50; BENCH_SIZES=480x640,640x480,512x512,375x500
    SEEN=yolov3,faster_rcnn,centernet
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "error: no CUDA GPU visible to torch (use --dry_run on CPU)" >&2; exit 2; }
fi
rm -rf "$OUT"; mkdir -p "$OUT"
WEIGHTS=()
for name in ${SEEN//,/ }; do WEIGHTS+=(--weights "$name=random"); done
ROWS=(); FAILED=0

step() {  # step NAME COMMAND...: run, time, record PASS/FAIL; the log goes to OUT/NAME.log
    local name=$1; shift
    local start=$SECONDS
    if "$@" > "$OUT/$name.log" 2>&1; then
        ROWS+=("| $name | $((SECONDS - start)) | PASS |")
    else
        ROWS+=("| $name | $((SECONDS - start)) | FAIL (see $OUT/$name.log) |"); FAILED=1
        tail -5 "$OUT/$name.log" >&2
    fi
}

step stage_one_bf16 "$PY" MetaAAFG/train_meta_aafg.py --dataset toy --limit $IMAGES --models $SEEN \
    "${WEIGHTS[@]}" "${STEPS[@]}" --autocast bf16 --batch_size 4 --device $DEVICE --save_path "$OUT/aafg" \
    --no_progress
step stage_two_ddp "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 Compression/train_compression.py \
    --dataset "$OUT/aafg" --backbone bmshj2018-hyperprior --quality 1 --no_pretrained --N 32 --M 48 \
    --patch_size 64 --batch_size 2 --val_fraction 0 --num_workers 0 --max_steps $TRAIN_STEPS --device $DEVICE \
    --out "$OUT/codec" --no_progress --no_tensorboard
step evaluation "$PY" Evaluation/evaluate.py --dataset toy --limit $IMAGES --codecs jpeg=50 "$OUT/codec/last.pth.tar" \
    --device $DEVICE --out "$OUT/eval" --no_progress
step bench_meta_aafg "$PY" benchmarks/bench_meta_aafg.py --device $DEVICE --models $SEEN --mixed_sizes $BENCH_SIZES \
    --mixed_images 4 --mixed_batches 1,4 "${STEPS[@]}" --out "$OUT/bench_meta_aafg.json"
step host_syncs "$PY" benchmarks/bench_meta_aafg.py --device $DEVICE --models $SEEN --batch 2 --size 128 --batches 1 \
    --repeats 1 "${STEPS[@]}" --out "$OUT/bench_overhead.json"

echo
echo "GPU check on $("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if '$DEVICE' == 'cuda' else 'CPU (dry run)')")"
echo "| step | seconds | result |"
echo "|---|---:|---|"
printf '%s\n' "${ROWS[@]}"
exit $FAILED
