"""The stage-one hand-over format, written by stage one and read by stage two and the
visualisation; nothing else reads or writes it.

A stage-one output folder holds ``images/<id>.png`` (8-bit, lossless, original size) and
``manifest.jsonl`` (a single process) or ``manifest.shard-I-of-N.jsonl`` (shard I of N, one
writer per file, so safe on network filesystems; a folder may hold several, from runs with
other shard counts): one JSON line per finished image (:func:`manifest_record`) with ``id``,
``source`` (the original image, absolute or relative to the folder), ``output`` (the
augmented image, relative to the folder), ``width``, ``height``, ``linf`` (the L-inf
distance in 8-bit levels, :func:`linf_8bit`) and the model set's ``loss_before`` and
``loss_after``. Readers need only ``id``, ``source`` and ``output``; the last line of a
repeated id wins. An ``output`` that is absolute or climbs out with ``..`` is refused (a
symlinked ``images`` folder is fine).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from icm.io import read_jsonl

MANIFEST_NAME = "manifest.jsonl"


def manifest_name(shard: tuple[int, int] = (0, 1)) -> str:
    """The manifest a process writes: ``manifest.jsonl``, or one per shard of several."""
    index, count = shard
    return MANIFEST_NAME if count == 1 else f"manifest.shard-{index}-of-{count}.jsonl"


def manifest_files(root: str | os.PathLike) -> list[Path]:
    """Every manifest in a stage-one folder, ``manifest.jsonl`` first, then the shards' by name."""
    root = Path(root)
    single = [root / MANIFEST_NAME] if (root / MANIFEST_NAME).is_file() else []
    return single + sorted(p for p in root.glob("manifest.shard-*.jsonl") if p.is_file())


def read_manifest_records(root: str | os.PathLike) -> list[tuple[Path, int, dict]]:
    """(file, line number, record) of every line of every manifest in ``root``."""
    return [(path, line_no, record) for path in manifest_files(root)
            for line_no, record in enumerate(read_jsonl(path), 1)]


def linf_8bit(augmented: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image L-inf distance in 8-bit units: [B] integers as float."""
    diff = (augmented * 255).round() - (original * 255).round()
    return diff.abs().flatten(1).amax(dim=1)


def manifest_record(sample_id: str, source: str | os.PathLike, relpath: str, height: int, width: int, linf: float,
                    before: Mapping[str, float], after: Mapping[str, float]) -> dict:
    """One manifest line; stage two reads these keys."""
    return {
        "id": sample_id,
        "source": str(Path(source).resolve()),
        "output": relpath,
        "width": width,
        "height": height,
        "linf": linf,
        "loss_before": dict(before),
        "loss_after": dict(after),
    }


@dataclass(frozen=True)
class ImagePair:
    """One training sample: the codec encodes ``original`` and is scored against ``augmented``."""

    id: str
    original: Path
    augmented: Path


def _resolve_source(root: Path, source: str) -> Path:
    """A manifest ``source``: absolute, relative to the folder, or relative to the cwd."""
    path = Path(source)
    if path.is_absolute() or not (root / path).exists():
        return path
    return root / path


def read_manifest_pairs(root: str | os.PathLike) -> list[ImagePair]:
    """Pairs listed in the manifests of ``root``; entries whose files are missing are skipped
    (one warning with the count), the last entry of a repeated id wins."""
    root = Path(root)
    by_id: dict[str, ImagePair] = {}
    for manifest, line_no, record in read_manifest_records(root):
        missing_keys = [k for k in ("id", "source", "output") if k not in record]
        if missing_keys:
            raise ValueError(f"{manifest}:{line_no}: record lacks {', '.join(missing_keys)}")
        key = str(record["id"])
        output = Path(str(record["output"]))
        if output.is_absolute() or ".." in output.parts:  # the augmented image lives in the folder
            raise ValueError(f"{manifest}:{line_no}: output {str(output)!r} leaves {root}; refused")
        by_id[key] = ImagePair(key, _resolve_source(root, str(record["source"])), root / output)
    pairs, missing = [], []
    for pair in by_id.values():
        if pair.original.is_file() and pair.augmented.is_file():
            pairs.append(pair)
        else:
            missing.append(pair)
    if missing:
        first = missing[0]
        absent = first.original if not first.original.is_file() else first.augmented
        warnings.warn(
            f"{root}: skipped {len(missing)} of {len(by_id)} manifest entries with missing files "
            f"(first: {absent})",
            stacklevel=2,
        )
    return pairs
