"""Stage one and evaluation as many small jobs on a cluster, through submitit (Slurm, or
local processes to try it out): the path for data sets that outgrow static shards.

The work is cut into ``chunks`` static shards (``--shard I/N`` of the stage's own CLI), far
more than there are GPUs. At most ``parallel`` jobs are in flight; each time one ends the
next chunk is submitted, so fast GPUs take more chunks than slow ones (dynamic load
balancing) and a straggler holds up one small chunk, not a whole shard. A chunk whose job
fails (a crash, a lost node, a time limit) is submitted again up to ``retries`` times;
stage one resumes from its manifests, so a retry does only the images its last attempt did
not finish (and takes over the shard's lock, which a killed job leaves behind: submitit has
reported that job finished). On the local executor each job gets its own GPUs.

Outputs have the format of a static-shard run: stage one's chunks write into one
``--save_path``, each chunk its own ``manifest.shard-I-of-N.jsonl`` (no file has two
writers, so the folder may sit on NFS); evaluation's chunks write
``<--out>/shards/shard-I-of-N`` and are merged into ``--out`` (``evaluate.py --merge``)
once all have finished.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

STAGES = ("meta_aafg", "evaluate")


class Job(Protocol):
    def done(self) -> bool: ...
    def result(self) -> Any: ...


class Executor(Protocol):
    def submit(self, fn, *args) -> Job: ...


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``; the last one wins)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _without_flag(argv: Sequence[str], flag: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def evaluation_shard_folder(out: str | Path, index: int, count: int) -> Path:
    """Where evaluation chunk ``index`` of ``count`` writes (merged into ``out`` at the end)."""
    return Path(out) / "shards" / f"shard-{index}-of-{count}"


def chunk_command(stage: str, argv: Sequence[str], index: int, count: int) -> list[str]:
    """The stage CLI's arguments for chunk ``index`` of ``count``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
    if flag_value(argv, "--shard") is not None:
        raise ValueError("--shard is set by the chunking; leave it out of the stage's flags")
    argv = [*argv, "--shard", f"{index}/{count}", "--no_progress"]
    if stage == "evaluate":
        out = flag_value(argv, "--out")
        if out is None:
            raise ValueError("evaluate needs --out (the chunks write under OUT/shards, merged into OUT)")
        argv = [*_without_flag(argv, "--out"), "--out", str(evaluation_shard_folder(out, index, count))]
    return argv


def run_chunk(stage: str, argv: list[str]) -> int:
    """Run one chunk in this process (what a job does); a non-zero exit is an error."""
    if stage == "meta_aafg":
        from icm.aafg.train import main
    elif stage == "evaluate":
        from icm.evaluation.evaluate import main
    else:
        raise ValueError(f"unknown stage {stage!r}")
    status = main(argv)
    if status:
        raise RuntimeError(f"{stage} {' '.join(argv)}: exit status {status}")
    return 0


@dataclass
class ChunkReport:
    """What the submission did: attempts per chunk, and the chunks that failed every attempt."""

    chunks: int
    attempts: Counter = field(default_factory=Counter)
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    def format(self) -> str:
        retried = sum(1 for n in self.attempts.values() if n > 1)
        lines = [f"{self.chunks - len(self.failed)} of {self.chunks} chunks done in {self.seconds:.0f} s "
                 f"({sum(self.attempts.values())} jobs, {retried} chunks retried)"]
        lines += [f"  chunk {i} failed: {reason}" for i, reason in sorted(self.failed.items())]
        return "\n".join(lines)


def submit_chunks(executor: Executor, stage: str, argv: Sequence[str], chunks: int, parallel: int,
                  retries: int = 2, poll_seconds: float = 5.0, progress: bool = True,
                  gpu_slots: Sequence[Sequence[int]] | None = None) -> ChunkReport:
    """Run ``chunks`` chunks of ``stage`` on ``executor``, at most ``parallel`` at a time,
    each retried up to ``retries`` times; returns the :class:`ChunkReport`. ``gpu_slots``
    (local executor): the GPU ids of each slot; a job takes a free slot (its
    ``CUDA_VISIBLE_DEVICES``), so at most that many run at once."""
    if chunks < 1 or parallel < 1 or retries < 0:
        raise ValueError("need chunks >= 1, parallel >= 1 and retries >= 0")
    if gpu_slots is not None:
        if not gpu_slots:
            raise ValueError("no GPU slots: fewer GPUs than --gpus_per_job")
        parallel = min(parallel, len(gpu_slots))
    commands = [chunk_command(stage, argv, i, chunks) for i in range(chunks)]
    report = ChunkReport(chunks)
    pending, running, slot_of = deque(range(chunks)), {}, {}
    free_slots = deque(range(len(gpu_slots))) if gpu_slots is not None else None
    start = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=chunks, desc=f"{stage} chunks", unit="chunk", disable=not progress)
    while pending or running:
        while pending and len(running) < parallel:
            i = pending.popleft()
            report.attempts[i] += 1
            command = commands[i]
            if report.attempts[i] > 1 and stage == "meta_aafg":
                command = [*command, "--force_unlock"]  # the failed attempt's lock, if it was killed
            if free_slots is not None:
                slot_of[i] = free_slots.popleft()
                executor.update_parameters(local_visible_gpus=list(gpu_slots[slot_of[i]]))
            running[i] = executor.submit(run_chunk, stage, command)
        finished = [i for i, job in running.items() if job.done()]
        if not finished:
            time.sleep(poll_seconds)
            continue
        for i in finished:
            if i in slot_of:
                free_slots.append(slot_of.pop(i))
            try:
                running.pop(i).result()
            except Exception as e:  # the job's exception, re-raised by submitit
                reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
                if report.attempts[i] <= retries:
                    warnings.warn(f"chunk {i} failed (attempt {report.attempts[i]}): {reason}; retrying",
                                  stacklevel=2)
                    pending.append(i)
                    continue
                report.failed[i] = reason
            bar.update(1)
    bar.close()
    report.seconds = time.perf_counter() - start
    return report


def local_gpu_slots(gpus_per_job: int, gpu_count: int) -> list[list[int]] | None:
    """The local executor's GPU slots: ``gpus_per_job`` GPUs each, disjoint (None: no GPUs)."""
    if gpus_per_job == 0:
        return None
    return [list(range(k, k + gpus_per_job)) for k in range(0, gpu_count - gpus_per_job + 1, gpus_per_job)]


def make_executor(kind: str, folder: str | Path, timeout_min: int, gpus_per_job: int, cpus_per_job: int,
                  mem_gb: float | None, partition: str | None):
    """A submitit executor: ``slurm`` (one task per job) or ``local`` (subprocesses)."""
    import submitit

    if kind not in ("slurm", "local"):
        raise ValueError(f"--executor must be slurm or local, got {kind!r}")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    params: dict[str, Any] = {"timeout_min": timeout_min, "gpus_per_node": gpus_per_job,
                              "cpus_per_task": cpus_per_job, "tasks_per_node": 1, "nodes": 1}
    if mem_gb:
        params["mem_gb"] = mem_gb
    if partition and kind == "slurm":
        params["slurm_partition"] = partition
    executor.update_parameters(**params)
    return executor
