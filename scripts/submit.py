"""Run stage one or evaluation as many small jobs on Slurm (or local processes), through
submitit: a window of jobs in flight, failed chunks retried (see icm/cluster.py).

    python scripts/submit.py meta_aafg --executor slurm --partition gpu --chunks 512 --parallel 64 \\
        -- --dataset oid --data_root /data/oid --split train --save_path /nfs/maa/oid_aug
    python scripts/submit.py evaluate --executor local --chunks 4 --parallel 2 \\
        -- --config configs/toy.yaml --out runs/eval_cluster

Everything after ``--`` goes to the stage's own CLI (MetaAAFG/train_meta_aafg.py or
Evaluation/evaluate.py), with ``--shard I/N`` added per chunk. Exit status 1 when a chunk
failed all its attempts (the others are done first), 2 on a bad flag.
"""

from __future__ import annotations

import argparse
import sys

from icm.cli import exit_on_user_error, non_negative_int, positive_int, positive_number
from icm.cluster import (
    STAGES,
    evaluation_shard_folder,
    flag_value,
    local_gpu_slots,
    make_executor,
    submit_chunks,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="submit.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Then: -- followed by the stage's own flags.",
    )
    p.add_argument("stage", choices=STAGES, help="meta_aafg: stage one; evaluate: evaluation, merged at the end")
    p.add_argument("--executor", choices=["slurm", "local"], default="slurm",
                   help="slurm: one Slurm job per chunk; local: subprocesses on this machine (to try it out)")
    p.add_argument("--chunks", type=positive_int, default=64,
                   help="N: the work is cut into N static shards, many more than GPUs (balance, cheap retries)")
    p.add_argument("--parallel", type=positive_int, default=8, help="jobs in flight at once (e.g. the GPUs you may use)")
    p.add_argument("--retries", type=non_negative_int, default=2, help="new attempts of a failed chunk")
    p.add_argument("--logs", default="runs/submitit", help="submitit's folder of job scripts, logs and results")
    p.add_argument("--timeout_min", type=positive_int, default=240, help="time limit of one job, minutes")
    p.add_argument("--gpus_per_job", type=non_negative_int, default=1, help="GPUs per job (0 on a CPU machine)")
    p.add_argument("--cpus_per_job", type=positive_int, default=8, help="CPU cores per job")
    p.add_argument("--mem_gb", type=positive_number, default=None, help="memory per job (None: the cluster's default)")
    p.add_argument("--partition", default=None, help="Slurm partition (None: the cluster's default)")
    p.add_argument("--poll_seconds", type=positive_number, default=10.0, help="how often job states are checked")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own, stage_flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)
    if not stage_flags:
        raise ValueError("give the stage's own flags after --")
    executor = make_executor(args.executor, args.logs, args.timeout_min, args.gpus_per_job, args.cpus_per_job,
                             args.mem_gb, args.partition)
    slots = None
    if args.executor == "local":
        import torch

        slots = local_gpu_slots(args.gpus_per_job, torch.cuda.device_count())
    report = submit_chunks(executor, args.stage, stage_flags, args.chunks, args.parallel, args.retries,
                           args.poll_seconds, progress=not args.no_progress, gpu_slots=slots)
    print(report.format())
    if report.failed:
        print(f"error: {len(report.failed)} chunks failed every attempt; logs in {args.logs}", file=sys.stderr)
        return 1
    if args.stage == "evaluate":
        from icm.evaluation.evaluate import main as evaluate

        out = flag_value(stage_flags, "--out")
        shards = [str(evaluation_shard_folder(out, i, args.chunks)) for i in range(args.chunks)]
        return evaluate(["--merge", *shards, "--out", out])
    return 0


if __name__ == "__main__":
    sys.exit(main())
