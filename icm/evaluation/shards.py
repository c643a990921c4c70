"""Sharded evaluation: each process evaluates one block of the images, a merge gives the
result files of one unsharded run.

    python Evaluation/evaluate.py ... --shard 0/2 --out runs/eval/shard0
    python Evaluation/evaluate.py ... --shard 1/2 --out runs/eval/shard1
    python Evaluation/evaluate.py --merge runs/eval/shard0 runs/eval/shard1 --out runs/eval

Shard ``I/N`` takes the I-th of N contiguous blocks of the image list (torchrun's
RANK/WORLD_SIZE when ``--shard`` is not given under torchrun). Besides its point files and
per-image records, a shard writes each detector's predictions
(``points/<stem>.predictions.npz``). The merge checks that the shards are ``0..N-1`` of one
run (same settings, one block each, together the whole image list in order), concatenates
the per-image rate and fidelity values and the predictions, and computes every detection
metric afresh on the whole list: the same keys and values as one unsharded run, timings
aside (means of the shards' means) and float sums to rounding. Mask AP is not merged
(masks are not kept); a shard point that has it is an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from icm.ap_bootstrap import PointSamples, image_matches
from icm.data.records import DetectionDataset
from icm.io import atomic_path, atomic_write_json, read_json

PREDICTIONS_SUFFIX = ".predictions.npz"


def shard_of(dataset: DetectionDataset, shard: tuple[int, int]) -> DetectionDataset:
    """Block ``i`` of ``n`` contiguous blocks of ``dataset``'s samples."""
    i, n = shard
    count = len(dataset.samples)
    return dataclasses.replace(dataset, samples=dataset.samples[i * count // n:(i + 1) * count // n])


def predictions_path(point: Path) -> Path:
    return point.with_name(point.stem + PREDICTIONS_SUFFIX)


def save_predictions(path: Path, predictions: dict[str, list[dict]], predictable: dict[str, list[int] | None]) -> None:
    """Each detector's per-image ``boxes``/``scores``/``labels`` (plain arrays, no pickle)."""
    arrays: dict[str, np.ndarray] = {"detectors": np.asarray(list(predictions), dtype=str)}
    for k, (name, preds) in enumerate(predictions.items()):
        arrays[f"det{k}.counts"] = np.asarray([len(np.asarray(p["scores"]).reshape(-1)) for p in preds], dtype=np.int64)
        arrays[f"det{k}.boxes"] = np.concatenate([np.asarray(p["boxes"], np.float64).reshape(-1, 4) for p in preds]
                                                 + [np.zeros((0, 4))])
        arrays[f"det{k}.scores"] = np.concatenate([np.asarray(p["scores"], np.float64).reshape(-1) for p in preds]
                                                  + [np.zeros(0)])
        arrays[f"det{k}.labels"] = np.concatenate([np.asarray(p["labels"], np.int64).reshape(-1) for p in preds]
                                                  + [np.zeros(0, np.int64)])
        classes = predictable.get(name)
        arrays[f"det{k}.predictable"] = np.asarray([-1] if classes is None else classes, dtype=np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_predictions(path: Path) -> tuple[dict[str, list[dict]], dict[str, list[int] | None]]:
    """The inverse of :func:`save_predictions`."""
    with np.load(path, allow_pickle=False) as data:
        predictions, predictable = {}, {}
        for k, name in enumerate(data["detectors"].tolist()):
            splits = np.cumsum(data[f"det{k}.counts"])[:-1]
            predictions[name] = [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(
                np.split(data[f"det{k}.boxes"], splits), np.split(data[f"det{k}.scores"], splits),
                np.split(data[f"det{k}.labels"], splits))]
            classes = data[f"det{k}.predictable"].tolist()
            predictable[name] = None if classes == [-1] else classes
    return predictions, predictable


def merge_shards(shard_dirs: list[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """Merge the shard folders into ``out_dir`` (see the module docstring); returns the
    curve files written."""
    from icm.evaluation.engine import (
        curve_path,
        detection_metrics,
        group_means,
        load_evaluation_dataset,
        merge_points,
        sidecar_path,
        voc_ground_truth,
    )

    shard_dirs, out_dir = [Path(d) for d in shard_dirs], Path(out_dir)
    points = sorted(p.name for p in (shard_dirs[0] / "points").glob("*.json"))
    if not points:
        raise FileNotFoundError(f"{shard_dirs[0] / 'points'}: no point files to merge")
    curves: dict[str, list[dict]] = {}
    dataset = None
    for name in points:
        records = [_read_shard_point(d / "points" / name) for d in shard_dirs]
        shards = sorted(tuple(r["settings"]["shard"]) for r in records)
        n = shards[0][1]
        if shards != [(i, n) for i in range(n)]:
            raise ValueError(f"{name}: the folders hold shards {shards}, not 0..{n - 1} of {n} once each")
        records.sort(key=lambda r: r["settings"]["shard"][0])
        per_shard = ("shard", "num_images")
        shared = {k: v for k, v in records[0]["settings"].items() if k not in per_shard}
        for d, r in zip(shard_dirs, records):
            if {k: v for k, v in r["settings"].items() if k not in per_shard} != shared:
                raise ValueError(f"{d / 'points' / name}: made with other settings than the other shards")
        settings = {**{k: v for k, v in shared.items() if k not in ("dataset_arg", "num_images_all")},
                    "num_images": shared["num_images_all"]}
        if dataset is None or dataset.name != settings["dataset"]:
            dataset = load_evaluation_dataset(shared["dataset_arg"], settings["split"], settings["data_root"],
                                              settings["limit"])
        samples = [PointSamples.load(d / "points" / r["sidecar"]) for d, r in zip(shard_dirs, records)]
        image_ids = np.concatenate([s.image_ids for s in samples])
        if image_ids.tolist() != [str(s.id) for s in dataset.samples]:
            raise ValueError(f"{name}: the shards' images are not the dataset's image list in order "
                             f"({len(image_ids)} images, the dataset has {len(dataset.samples)})")
        per_image = {k: np.concatenate([s.per_image[k] for s in samples]) for k in samples[0].per_image}
        results = _fidelity(per_image, records)
        notes = [n for n in records[0]["notes"] if n.startswith("ms-ssim")]
        detectors = [k.split(":", 1)[1] for k in records[0]["results"] if k.startswith("map-voc07:")
                     and not k.endswith("-mean")]
        predictions, predictable = {d: [] for d in detectors}, {}
        for d in shard_dirs if detectors else []:
            preds, classes = load_predictions(predictions_path(d / "points" / name))
            for det in detectors:
                predictions[det].extend(preds[det])
            predictable.update(classes)
        if detectors:
            det_results, per_class, det_notes = detection_metrics(
                dataset, predictions, per_class=bool(settings.get("per_class")), predictable=predictable)
            results.update(det_results)
            results.update(group_means(det_results, records[0].get("detector_groups") or {}, detectors))
            notes.extend(det_notes)
        truth = voc_ground_truth(dataset.samples)
        merged_samples = PointSamples(image_ids, per_image, {
            det: image_matches(truth, predictions[det], len(dataset.classes), image_ids=image_ids.tolist())
            for det in detectors})
        path = out_dir / "points" / name
        sidecar = sidecar_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        merged_samples.save(sidecar)
        record = {**records[0], "settings": settings, "num_images": len(image_ids), "notes": notes,
                  "results": {k: [v] for k, v in results.items()}, "sidecar": sidecar.name,
                  "merged_from": [str(d) for d in shard_dirs]}
        if detectors and settings.get("per_class"):
            record["per_class"] = [per_class]
        atomic_write_json(path, record)
        curves.setdefault(record["name"], []).append(record)
    written = []
    for records in curves.values():
        codec = SimpleNamespace(name=records[0]["codec"]["name"], rate_type=records[0]["codec"]["rate"])
        curve_file = curve_path(out_dir, codec)
        atomic_write_json(curve_file, merge_points(records))
        written.append(curve_file)
    return written


def _read_shard_point(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing in this shard (every shard must have finished every point)")
    record = read_json(path)
    if not record.get("finished") or "shard" not in (record.get("settings") or {}):
        raise ValueError(f"{path}: not a finished shard point (evaluate.py --shard I/N writes them)")
    if any(k.startswith("mask-") for k in record["results"]):
        raise ValueError(f"{path}: mask AP cannot be merged (shards keep no masks); evaluate mask models unsharded")
    return record


def _fidelity(per_image: dict[str, np.ndarray], records: list[dict]) -> dict[str, Any]:
    """bpp, PSNR, MS-SSIM as per-image means over all images; coding times as the shards'
    image-weighted means."""
    counts = np.asarray([r["num_images"] for r in records], dtype=np.float64)
    out: dict[str, Any] = {}
    for key in ("bpp", "psnr-rgb"):
        out[key] = float(np.mean(per_image[key]))
    ms_ssim = per_image.get("ms-ssim-rgb")
    finite = ms_ssim[np.isfinite(ms_ssim)] if ms_ssim is not None else np.zeros(0)
    out["ms-ssim-rgb"] = float(np.mean(finite)) if finite.size else None
    for key in ("encoding_time", "decoding_time"):
        out[key] = float(np.sum(counts * [r["results"][key][0] for r in records]) / counts.sum())
    return out


def shard_settings(shard: tuple[int, int] | None) -> dict[str, Any]:
    """The ``shard`` entry of a point's settings (JSON form), or nothing."""
    return {} if shard is None else {"shard": json.loads(json.dumps(list(shard)))}
