#!/usr/bin/env bash
# The toy-world benchmark behind the README's results table: scripts/demo.sh at a larger
# scale. Defaults: stage one on the whole toy train split (2000 images), 500 fine-tuning steps
# per (quality, beta, seed) at all six toy qualities, MAA and the beta = 0 control each with
# two stage-two seeds (seed 1 against seed 0 is the noise floor, in tables_vs_control and
# tables_vs_maa), WebP and JPEG evaluated as anchors too, evaluation on all 300 toy validation
# images and all 300 of the shifted domain (val_shifted; the generalization table),
# two processes at a time (stage-one shards, stage-two trainings; logs in $OUT/logs).
# Each can be changed through the same variables as the demo (BENCH_* here, e.g.
# BENCH_IMAGES=400, BENCH_STAGE_ONE_FLAGS="--smooth 15", BENCH_BETA=1); every step resumes
# where an interrupted run stopped. Every BD table carries 95% paired bootstrap intervals.
#
#   bash benchmarks/toy_benchmark.sh        # many hours on 2 CPU cores; see the README
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_IMAGES=${BENCH_IMAGES:-all} \
DEMO_STEPS=${BENCH_STEPS:-500} \
DEMO_VAL=${BENCH_VAL:-all} \
DEMO_SHIFTED=${BENCH_SHIFTED:-all} \
DEMO_QUALITIES=${BENCH_QUALITIES:-"1 2 3 4 5 6"} \
DEMO_JOBS=${BENCH_JOBS:-2} \
DEMO_SEEDS=${BENCH_SEEDS:-"0 1"} \
DEMO_PILLOW=${BENCH_PILLOW:-"webp jpeg"} \
DEMO_STAGE_ONE_FLAGS=${BENCH_STAGE_ONE_FLAGS:-} \
DEMO_BETA=${BENCH_BETA:-1} \
DEMO_OUT=${BENCH_OUT:-runs/toy_benchmark} \
    exec bash scripts/demo.sh
