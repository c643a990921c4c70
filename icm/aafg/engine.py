"""The stage-one run loop: which images this process does, in batches (of similar sizes),
written atomically and resumably to the output folder.

Output folder (read by stage two)::

    save_path/images/<safe id>.png   8-bit RGB, lossless, the source's size
    save_path/manifest.jsonl         one line per finished image (see ``icm/manifest.py``);
                                     shard I of N writes manifest.shard-I-of-N.jsonl
    save_path/config.yaml            the resolved run config (written by the CLI)
    save_path/summary.json           this process's summary (summary.shard-I-of-N.json)

An image is finished when its line exists in any of the folder's manifests: the PNG is
renamed into place first, then the line is appended, so a crash at any point leaves either
nothing for that image or a complete PNG that the rerun simply writes again. Each process
appends only to its own shard's manifest, so no file has two writers, on a local disk or
on NFS from many machines; the image files do not collide because shards are disjoint, and
a rerun with another shard count skips what any earlier shard finished.
"""

from __future__ import annotations

import time
import urllib.parse
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha1
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from icm.aafg.meta_aafg import MetaAAFGConfig, Reconstruction, augment_batch
from icm.data.records import DetectionSample
from icm.io import (
    ImageReadError,
    append_jsonl,
    atomic_write_json,
    held_lock,
    read_image_tensor,
    remove_stale_temp_files,
    write_image,
)
from icm.manifest import linf_8bit, manifest_name, manifest_record, read_manifest_records

if TYPE_CHECKING:
    from icm.detectors.base import Detector

IMAGES_DIR = "images"
MAX_STEM_CHARS = 180  # well under the 255-byte file-name limit, with room for ".png"


# ----------------------------------------------------------------------------- the work list


def shard_samples(samples: Sequence[DetectionSample], index: int, count: int) -> list[DetectionSample]:
    """Samples ``index, index + count, ...``: the shards of 0..count-1 partition ``samples``."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= I < N")
    return list(samples[index::count])


def combined_shard(shard: tuple[int, int] | None, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
    """``--shard I/N`` across machines combined with torchrun's RANK/WORLD_SIZE inside each:
    process ``rank`` of machine-shard ``I`` does shard ``I * world_size + rank`` of ``N * world_size``."""
    index, count = shard or (0, 1)
    return index * world_size + rank, count * world_size


def safe_stem(sample_id: str) -> str:
    """A file name for an image id, with no path separator and no leading dot.

    Percent-encoding keeps it one-to-one (``a/b`` -> ``a%2Fb``, ``..`` -> ``%2E.``); names
    too long for the filesystem are cut and suffixed with a hash of the full id.
    """
    if not sample_id:
        raise ValueError("empty image id")
    stem = urllib.parse.quote(sample_id, safe="-_.~+=,@")
    if stem.startswith("."):
        stem = "%2E" + stem[1:]
    if len(stem) > MAX_STEM_CHARS:
        stem = stem[: MAX_STEM_CHARS - 17] + "-" + sha1(sample_id.encode()).hexdigest()[:16]
    return stem


def output_relpath(sample_id: str) -> str:
    """Where an image goes, relative to the save path: ``images/<safe id>.png``."""
    return f"{IMAGES_DIR}/{safe_stem(sample_id)}.png"


def finished_ids(save_path: Path) -> set[str]:
    """Ids that already have a manifest line (the proof that their image is complete)."""
    return {record["id"] for _, _, record in read_manifest_records(save_path)}


def equal_size_batches(samples: Sequence[DetectionSample], batch_size: int) -> list[list[DetectionSample]]:
    """Batches of at most ``batch_size`` samples of one recorded size, in first-seen order."""
    groups: dict[tuple[int, int], list[DetectionSample]] = defaultdict(list)
    for s in samples:
        groups[(s.height, s.width)].append(s)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def similar_size_batches(samples: Sequence[DetectionSample], batch_size: int) -> list[list[DetectionSample]]:
    """Batches of at most ``batch_size`` samples of any sizes: sorted by aspect ratio, then
    area, by their recorded sizes (little padding, as torchvision's aspect-ratio grouping),
    equal sizes together; an image's result does not depend on its batch-mates."""
    ordered = sorted(samples, key=lambda s: (s.width / max(s.height, 1), s.height * s.width))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def gt_targets(sample: DetectionSample, device: torch.device) -> dict[str, torch.Tensor]:
    """A sample's boxes and labels as loss targets (COCO crowd boxes left out, as in training)."""
    keep = ~sample.iscrowd
    return {
        "boxes": torch.as_tensor(sample.boxes[keep], dtype=torch.float32, device=device),
        "labels": torch.as_tensor(sample.labels[keep], dtype=torch.int64, device=device),
    }


# ----------------------------------------------------------------------------- the run


@dataclass
class RunSummary:
    """What one process did: counts, failures with reasons, means over the images it wrote."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    linf: list[float] = field(default_factory=list)
    loss_before: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    loss_after: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    gradient_evaluations: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        def mean(values):
            return sum(values) / len(values) if values else None

        return {
            "done": self.done,
            "skipped": self.skipped,
            "failed": len(self.failed),
            "failures": [{"id": i, "reason": r} for i, r in self.failed],
            "mean_linf": mean(self.linf),
            "mean_loss_before": {k: mean(v) for k, v in self.loss_before.items()},
            "mean_loss_after": {k: mean(v) for k, v in self.loss_after.items()},
            "gradient_evaluations": self.gradient_evaluations,
            "seconds": round(self.seconds, 3),
            "images_per_second": self.done / self.seconds if self.seconds > 0 else None,
        }

    def format(self) -> str:
        d = self.as_dict()
        lines = [
            f"done {d['done']}, skipped (already in the manifest) {d['skipped']}, failed {d['failed']}",
        ]
        lines += [f"  failed {f['id']}: {f['reason']}" for f in d["failures"]]
        if d["mean_linf"] is not None:
            lines.append(f"mean L-inf {d['mean_linf']:.2f} (8-bit units)")
        for name, before in d["mean_loss_before"].items():
            after = d["mean_loss_after"][name]
            lines.append(f"  {name}: mean loss {before:.4f} -> {after:.4f} ({after - before:+.4f})")
        if d["images_per_second"]:
            lines.append(f"{d['images_per_second']:.3f} images/s over {d['seconds']:.1f} s")
        return "\n".join(lines)


def _read_batch(batch, summary, device) -> list[tuple[DetectionSample, torch.Tensor]]:
    """Read a batch's images; unreadable ones are counted, warned about and left out."""
    readable = []
    for sample in batch:
        try:
            readable.append((sample, read_image_tensor(sample.image_path).to(device)))
        except ImageReadError as e:
            warnings.warn(f"skipping {sample.id}: {e}", stacklevel=2)
            summary.failed.append((sample.id, str(e)))
    return readable


def run_stage_one(
    samples: Sequence[DetectionSample],
    detectors: Mapping[str, Detector],
    config: MetaAAFGConfig,
    save_path: str | Path,
    *args,
    shard: tuple[int, int] = (0, 1),
    force_unlock: bool = False,
    **kwargs,
) -> RunSummary:
    """:func:`augment_shard` under this shard's lock file in ``save_path`` (two processes on
    one shard would both do all of its work): a live holder is a one-line error, a dead
    one's lock (this machine) is taken over, another machine's needs ``force_unlock``."""
    lock = Path(save_path) / f".lock.shard-{shard[0]}-of-{shard[1]}"
    hint = "another process is writing this shard; give each process its own --shard I/N"
    with held_lock(lock, force=force_unlock, hint=hint):
        return augment_shard(samples, detectors, config, save_path, *args, shard=shard, **kwargs)


def augment_shard(
    samples: Sequence[DetectionSample],
    detectors: Mapping[str, Detector],
    config: MetaAAFGConfig,
    save_path: str | Path,
    targets: str = "gt",
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    on_image_written: Callable[[dict], None] | None = None,
    codec: Reconstruction | None = None,
    sharded: bool = False,
) -> RunSummary:
    """Augment this process's shard of ``samples`` into ``save_path``, skipping finished ids.
    ``sharded``: ``samples`` is already this shard's part (a reader that parsed only it).

    ``targets`` is ``"gt"`` (the samples' boxes) or ``"pseudo"`` (each detector's clean
    predictions). Every image draws from its own generator, seeded from ``seed`` and its id,
    so results depend neither on sharding, batching nor on where a previous run stopped.
    ``codec``: the codec-aware extension's reconstruction (see ``augment_batch``).
    """
    if targets not in ("gt", "pseudo"):
        raise ValueError(f"targets must be 'gt' or 'pseudo', got {targets!r}")
    ids = [s.id for s in samples]
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise ValueError(f"the dataset repeats image id {duplicates[0]!r}")
    device = torch.device(device)
    save_path = Path(save_path)
    images_dir = (save_path / IMAGES_DIR).resolve()
    images_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(save_path)  # images or lines of a process killed midway

    mine = list(samples) if sharded else shard_samples(samples, *shard)
    done_before = finished_ids(save_path)
    todo = [s for s in mine if s.id not in done_before]
    summary = RunSummary(skipped=len(mine) - len(todo))
    counter: Counter = Counter()
    start = time.perf_counter()
    desc = "Meta-AAFG" if shard[1] == 1 else f"Meta-AAFG shard {shard[0]}/{shard[1]}"
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    for batch in similar_size_batches(todo, batch_size):
        readable = _read_batch(batch, summary, device)
        bar.update(len(batch) - len(readable))  # the unreadable ones
        if not readable:
            continue
        batch_samples = [s for s, _ in readable]
        images = [img for _, img in readable]
        batch_targets = "pseudo" if targets == "pseudo" else [gt_targets(s, device) for s in batch_samples]
        augmented, before, after = augment_batch(
            images, batch_targets, detectors, config, counter,
            ids=[s.id for s in batch_samples], seed=seed, codec=codec,
        )
        for i, sample in enumerate(batch_samples):
            relpath = output_relpath(sample.id)
            dest = save_path / relpath
            if dest.resolve().parent != images_dir:  # safe_stem makes this impossible
                raise ValueError(f"image id {sample.id!r} would be written outside {images_dir}")
            write_image(dest, augmented[i].cpu())
            record = manifest_record(
                sample.id, sample.image_path, relpath, images[i].shape[1], images[i].shape[2],
                float(linf_8bit(augmented[i][None], images[i][None])[0]),
                {k: float(v[i]) for k, v in before.items()},
                {k: float(v[i]) for k, v in after.items()},
            )
            append_jsonl(save_path / manifest_name(shard), record)
            summary.done += 1
            summary.linf.append(record["linf"])
            for name in detectors:
                summary.loss_before[name].append(record["loss_before"][name])
                summary.loss_after[name].append(record["loss_after"][name])
            if on_image_written is not None:
                on_image_written(record)
        bar.update(len(batch_samples))
        bar.set_postfix_str(_running_losses(summary), refresh=False)
    bar.close()
    summary.gradient_evaluations = counter["gradient_evaluations"]
    summary.seconds = time.perf_counter() - start
    return summary


def _running_losses(summary: RunSummary) -> str:
    parts = []
    for name, before in summary.loss_before.items():
        after = summary.loss_after[name]
        parts.append(f"{name} {sum(before) / len(before):.3g}->{sum(after) / len(after):.3g}")
    return ", ".join(parts)


def write_summary(save_path: str | Path, summary: RunSummary, shard: tuple[int, int]) -> Path:
    """``summary.json`` (or ``summary.shard-I-of-N.json``): :meth:`RunSummary.as_dict` and the shard."""
    name = "summary.json" if shard[1] == 1 else f"summary.shard-{shard[0]}-of-{shard[1]}.json"
    path = Path(save_path) / name
    atomic_write_json(path, summary.as_dict() | {"shard": list(shard)})
    return path
