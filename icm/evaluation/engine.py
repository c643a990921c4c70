"""The evaluation loop: encode real bitstreams, decode once, measure rate, fidelity and the
detection accuracy of every detector on the decoded images; one result JSON per (codec,
quality) in CompressAI's schema, merged into one curve file per codec.

Result files (``OUT`` is ``--out``)::

    OUT/points/<codec>-q<quality>.json          one point; a rerun skips it when finished
    OUT/points/<codec>-q<quality>.matches.npz   its per-image records (bpp, PSNR, MS-SSIM,
                                                each detector's matches: icm/ap_bootstrap.py)
                                                for make_tables.py's bootstrap intervals
    OUT/<codec>.json                            the curve: every finished point of that codec,
                                                read by make_tables.py and compressai.utils.plot

Detection keys name their protocol: ``map-coco:<det>`` (AP@[.5:.95]), ``ap50-coco:<det>``,
``ap75-coco:<det>``, ``map-voc07:<det>`` (11-point mAP@0.5), ``map-voc12:<det>``
(all-point mAP@0.5), ``mask-map-coco:<det>`` (segm) and the group means
``<metric>:<group>-mean`` (groups ``seen``, ``unseen``, ``all``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from icm.ap_bootstrap import MASK_RECORDS, PointSamples, image_matches, mask_matches
from icm.codec import ARCHITECTURES, BACKBONE_ALIASES, bits_per_pixel, resolve_backbone
from icm.data import load_dataset
from icm.data.records import DetectionDataset
from icm.evaluation.coco_eval import BACKEND as COCO_BACKEND
from icm.evaluation.coco_eval import (
    category_ids_of,
    coco_detections,
    coco_ground_truth,
    coco_map,
    image_ids_of,
    masks_to_rle,
)
from icm.evaluation.image_codecs import (
    IdentityCodec,
    LearnedCodec,
    PillowCodec,
    checkpoint_label,
    learned_from_checkpoint,
    learned_from_zoo,
)
from icm.evaluation.metrics import FidelityMeter, ms_ssim_8bit, psnr, to_8bit
from icm.evaluation.oid_challenge import OIDImageTruth, oid_challenge_map
from icm.evaluation.shards import predictions_path, save_predictions
from icm.io import atomic_write_json, read_image_tensor, read_json
from icm.voc_eval import voc_map

PILLOW_CODECS = ("jpeg", "webp")
RESULT_FORMAT = 1

# ----------------------------------------------------------------------------- inputs


def load_evaluation_dataset(name: str, split: str | None = None, root: str | os.PathLike | None = None,
                            limit: int | None = None) -> DetectionDataset:
    """A dataset through :func:`icm.data.load_dataset`: ``voc``, ``coco``, ``oid``, ``toy``
    (any case), a dataset config, or a folder of images (no labels: rate and fidelity only;
    also ``folder`` with ``root``); the first ``limit`` samples. No images is an error."""
    if name == "folder":
        if root is None:
            raise ValueError("--dataset folder needs --data_root DIR (the image folder)")
        name, root = str(root), None
    kwargs = {k: v for k, v in (("split", split), ("root", root)) if v is not None}
    dataset = load_dataset(name, limit=limit, **kwargs)
    if not dataset.samples:
        raise ValueError(f"dataset {name!r}: no images to evaluate")
    return dataset


@torch.no_grad()
def pseudo_labelled(dataset: DetectionDataset, detector: Any, min_score: float, batch_size: int = 8,
                    progress: bool = True) -> DetectionDataset:
    """``dataset`` with pseudo ground truth: ``detector``'s own detections of score >=
    ``min_score`` on each uncompressed image, in the detector's classes. The protocol of ICM
    papers when labels are missing: mAP then measures how far compression moves the
    detector from what it sees on the original, not how right it is."""
    samples = []
    bar = tqdm(total=len(dataset.samples), desc="pseudo ground truth", unit="img", disable=not progress, leave=False)
    for start in range(0, len(dataset.samples), batch_size):
        batch = dataset.samples[start : start + batch_size]
        images = [read_image_tensor(s.image_path).to(detector.device) for s in batch]
        for sample, pred in zip(batch, detector.predict(images)):
            keep = (pred["scores"] >= min_score).cpu()
            samples.append(dataclasses.replace(
                sample, boxes=pred["boxes"].cpu()[keep].numpy().astype(np.float32).reshape(-1, 4),
                labels=pred["labels"].cpu()[keep].numpy().astype(np.int64),
                difficult=np.zeros(int(keep.sum()), bool), iscrowd=np.zeros(int(keep.sum()), bool),
                group=np.zeros(int(keep.sum()), bool), verified=np.zeros(0, np.int64)))
        bar.update(len(batch))
    bar.close()
    return DetectionDataset(f"{dataset.name} (pseudo ground truth)", list(detector.classes), samples)


# ----------------------------------------------------------------------------- codec specs


@dataclass
class CodecSpec:
    """One ``--codecs`` entry: ``none``, ``jpeg[=Q,...]``, ``webp[=Q,...]``, a zoo model
    ``NAME[=Q,...]`` (e.g. ``bmshj2018-hyperprior=1,2,3``), a checkpoint ``PATH`` or
    ``LABEL=PATH[,PATH...]`` (several checkpoints of one method form one curve)."""

    kind: str  # "none" | "pillow" | "zoo" | "checkpoint"
    name: str
    qualities: list[int] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)


def _is_checkpoint_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.endswith((".pth", ".tar", ".pt", ".ckpt")) or Path(text).is_file()


def parse_codec_spec(text: str, zoo_qualities: Sequence[int], pillow_qualities: Sequence[int]) -> CodecSpec:
    """Parse one ``--codecs`` entry (see :class:`CodecSpec`)."""
    text = str(text).strip()
    label, _, value = text.partition("=")
    label = label.strip()
    items = [v.strip() for v in value.split(",") if v.strip()]
    if label.lower() == "none":
        return CodecSpec("none", "none")
    if label.lower() in PILLOW_CODECS:
        qualities = [_quality(q, text) for q in items] or list(pillow_qualities)
        return CodecSpec("pillow", label.lower(), qualities)
    zoo_key = label.lower().replace("_", "-")
    if zoo_key in ARCHITECTURES or zoo_key in BACKBONE_ALIASES:
        qualities = [_quality(q, text) for q in items] or list(zoo_qualities)
        return CodecSpec("zoo", resolve_backbone(zoo_key), qualities)
    if items:
        spec = CodecSpec("checkpoint", label, paths=[Path(p) for p in items])
    elif _is_checkpoint_path(label):
        spec = CodecSpec("checkpoint", checkpoint_label(label), paths=[Path(label)])
    else:
        spec = None
    if spec is not None:
        missing = [p for p in spec.paths if not p.is_file()]
        if missing:  # before any codec is evaluated, not after the others
            raise ValueError(f"--codecs {text!r}: {missing[0]}: no such checkpoint file")
        return spec
    raise ValueError(
        f"--codecs {text!r}: not none, jpeg, webp, a CompressAI zoo name "
        f"({', '.join(ARCHITECTURES)}) or a checkpoint path"
    )


def _quality(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--codecs {spec!r}: quality {text!r} is not an integer") from None


def iter_codecs(spec: CodecSpec, device: torch.device, metric: str = "mse",
                estimate: bool = False, backbone: str | None = None) -> Iterator[Any]:
    """The codecs of one spec, one per quality (learned models built lazily, one at a time)."""
    if spec.kind == "none":
        yield IdentityCodec()
    elif spec.kind == "pillow":
        for q in spec.qualities:
            yield PillowCodec(spec.name, q)
    elif spec.kind == "zoo":
        for q in spec.qualities:
            yield learned_from_zoo(spec.name, q, metric=metric, device=device, estimate=estimate)
    else:
        for path in spec.paths:
            yield learned_from_checkpoint(path, label=spec.name, device=device, estimate=estimate,
                                          backbone=backbone)


def result_name(codec: Any) -> str:
    """The curve name of a codec as results report it (estimated rates are labelled)."""
    return f"{codec.name} (estimated bpp)" if codec.rate_type == "estimated" else codec.name


def point_path(out_dir: Path, codec: Any) -> Path:
    """``OUT/points/<codec>[-est]-q<quality>[-<checkpoint>].json``."""
    stem = _safe(codec.name) + ("-est" if codec.rate_type == "estimated" else "")
    quality = "NA" if codec.quality is None else str(codec.quality)
    source = getattr(codec, "source", None)
    return out_dir / "points" / (f"{stem}-q{quality}" + (f"-{_safe(source)}" if source else "") + ".json")


def sidecar_path(point: Path) -> Path:
    """``OUT/points/<stem>.matches.npz`` next to the point file ``OUT/points/<stem>.json``."""
    return point.with_name(point.stem + ".matches.npz")


def curve_path(out_dir: Path, codec: Any) -> Path:
    """``OUT/<codec>[-est].json``."""
    return out_dir / (_safe(codec.name) + ("-est" if codec.rate_type == "estimated" else "") + ".json")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "codec"


# ----------------------------------------------------------------------------- evaluation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prediction_to_numpy(pred: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A detector's prediction as the metrics take it: numpy boxes, scores, labels, and
    instance masks as COCO RLEs (``segmentation``)."""
    out = {k: pred[k].detach().cpu().numpy() for k in ("boxes", "scores", "labels")}
    if "masks" in pred:
        out["segmentation"] = masks_to_rle(pred["masks"]) if len(out["boxes"]) else []
    return out


@torch.no_grad()
def evaluate_codec(
    codec: Any,
    dataset: DetectionDataset,
    detectors: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    per_class: bool = False,
    groups: dict[str, list[str]] | None = None,
    mask_ground_truth: dict | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate one codec at one quality on every sample of ``dataset``.

    Returns ``results`` (metric -> value, CompressAI's names plus detection keys), ``notes``
    (list of strings), ``samples`` (a :class:`~icm.ap_bootstrap.PointSamples`: per-image
    bpp, PSNR and MS-SSIM, and each detector's match records) and, with ``per_class``,
    ``per_class`` ({key: {class: AP}}).
    """
    device = torch.device(device)
    detectors = detectors or {}
    meter = FidelityMeter()
    predictions: dict[str, list[dict]] = {name: [] for name in detectors}
    samples = dataset.samples
    per_image: list[list[float]] = []
    bar = tqdm(total=len(samples), desc=f"{codec.name} q{codec.quality or '-'}", unit="img",
               disable=not progress, leave=False)
    for start in range(0, len(samples), batch_size):
        decoded = []
        for sample in samples[start : start + batch_size]:
            x = read_image_tensor(sample.image_path).unsqueeze(0).to(device)
            height, width = x.shape[-2:]
            _sync(device)
            t0 = time.perf_counter()
            payload, num_bytes = codec.encode(x)
            _sync(device)
            t1 = time.perf_counter()
            x_hat = codec.decode(payload)
            _sync(device)
            t2 = time.perf_counter()
            x_hat = to_8bit(x_hat.to(device)).div_(255.0)  # what a decoder writes to disk
            measured = bits_per_pixel(num_bytes, height, width), psnr(x, x_hat), ms_ssim_8bit(x, x_hat)
            meter.update(*measured, t1 - t0, t2 - t1)
            per_image.append([math.nan if v is None else v for v in measured])
            decoded.append(x_hat[0])
            bar.update(1)
        for name, detector in detectors.items():
            predictions[name].extend(prediction_to_numpy(p) for p in detector.predict(decoded))
    bar.close()

    summary = meter.summary()
    notes = []
    if "ms-ssim-rgb_note" in summary:
        notes.append("ms-ssim-rgb: " + summary.pop("ms-ssim-rgb_note"))
    out: dict[str, Any] = {"results": summary, "notes": notes, "num_images": meter.count}
    columns = np.asarray(per_image, dtype=np.float64).reshape(-1, 3).T
    image_ids = [str(s.id) for s in samples]
    ground_truth = voc_ground_truth(samples)
    matches = {name: image_matches(ground_truth, preds, len(dataset.classes), image_ids=image_ids)
               for name, preds in predictions.items()}
    if mask_ground_truth is not None:  # instance masks: COCO segm records beside the box ones
        category_ids, coco_ids = category_ids_of(dataset), image_ids_of(dataset, samples)
        for name, preds in predictions.items():
            if preds and any("segmentation" in p for p in preds):
                matches[MASK_RECORDS + name] = mask_matches(
                    mask_ground_truth, coco_detections(preds, category_ids, coco_ids, with_masks=True),
                    coco_ids, category_ids, image_ids)
    out["samples"] = PointSamples(
        np.asarray(image_ids, dtype=str), dict(zip(("bpp", "psnr-rgb", "ms-ssim-rgb"), columns)), matches)
    out["predictions"] = predictions
    out["predictable"] = {name: predictable_classes(d) for name, d in detectors.items()}
    if detectors:
        det_results, per_class_results, det_notes = detection_metrics(
            dataset, predictions, per_class=per_class, mask_ground_truth=mask_ground_truth,
            predictable=out["predictable"],
        )
        summary.update(det_results)
        summary.update(group_means(det_results, groups or {}, list(detectors)))
        notes.extend(det_notes)
        if per_class:
            out["per_class"] = per_class_results
    return out


def predictable_classes(detector: Any) -> list[int] | None:
    """The dataset class indices ``detector`` can predict (its label map's targets); None
    when it has no label map (every class)."""
    label_map = getattr(detector, "label_map", None)
    if label_map is None:
        return None
    targets = np.asarray(label_map.native_to_dataset).reshape(-1)
    return sorted({int(t) for t in targets if t >= 0})


def detection_metrics(
    dataset: DetectionDataset,
    predictions: dict[str, list[dict]],
    per_class: bool = False,
    mask_ground_truth: dict | None = None,
    predictable: dict[str, list[int] | None] | None = None,
) -> tuple[dict[str, float | None], dict[str, dict], list[str]]:
    """COCO (AP, AP50, AP75), VOC07 and VOC12 mAP@0.5 (and mask AP for detectors that
    predict masks) of each detector's predictions on ``dataset``'s samples, in order. On
    Open Images data with verified image-level labels, also the challenge metric
    (``map-oid``, :mod:`icm.evaluation.oid_challenge`) over the classes each detector can
    predict (``predictable``: detector -> class indices; None: all), named in the notes.

    Under the VOC protocol crowd and group-of boxes are ignored like difficult ones; under the
    COCO protocol difficult and group-of boxes are passed as crowd regions.
    """
    samples = dataset.samples
    classes = list(dataset.classes)
    category_ids = category_ids_of(dataset)
    image_ids = image_ids_of(dataset, samples)
    coco_gt = coco_ground_truth(samples, classes, category_ids, image_ids)
    voc_gt = voc_ground_truth(samples)
    results: dict[str, float | None] = {}
    per_class_results: dict[str, dict] = {}
    notes: list[str] = []
    for name, preds in predictions.items():
        coco = coco_map(coco_gt, coco_detections(preds, category_ids, image_ids), per_class=per_class)
        results[f"map-coco:{name}"] = coco["map"]
        results[f"ap50-coco:{name}"] = coco["ap50"]
        results[f"ap75-coco:{name}"] = coco["ap75"]
        for protocol, use_07 in (("voc07", True), ("voc12", False)):
            voc = voc_map(voc_gt, preds, len(classes), use_07_metric=use_07)
            results[f"map-{protocol}:{name}"] = voc.map
            if per_class:
                per_class_results[f"ap-{protocol}:{name}"] = dict(zip(classes, voc.ap_per_class))
        if per_class:
            per_class_results[f"ap-coco:{name}"] = coco.get("ap_per_class", {})
        if preds and any("segmentation" in p for p in preds):
            if mask_ground_truth is None:
                notes.append(f"mask-map-coco:{name}: skipped, the dataset has no ground-truth masks "
                             "(mask AP needs COCO instance annotations: --mask_annotations FILE)")
            else:
                dets = coco_detections(preds, category_ids, image_ids, with_masks=True)
                segm = coco_map(mask_ground_truth, dets, "segm", image_ids=image_ids)
                results[f"mask-map-coco:{name}"] = segm["map"]
                results[f"mask-ap50-coco:{name}"] = segm["ap50"]
                results[f"mask-ap75-coco:{name}"] = segm["ap75"]
    if any(len(s.verified) for s in samples):
        truths = [OIDImageTruth(s.boxes, s.labels, s.group, {int(c) for c in s.verified}) for s in samples]
        for name, preds in predictions.items():
            subset = (predictable or {}).get(name)
            oid = oid_challenge_map(truths, preds, len(classes), classes=subset)
            results[f"map-oid:{name}"] = oid["map"]
            if per_class:
                per_class_results[f"ap-oid:{name}"] = {classes[c]: v for c, v in oid["ap_per_class"].items()}
            notes.append(f"map-oid:{name}: Open Images challenge metric (hierarchy-expanded truth, verified classes, "
                         f"group-of by IoA) averaged over the {len(oid['classes'])} classes with boxes among the "
                         f"{len(classes) if subset is None else len(subset)} it can predict: "
                         + ", ".join(classes[c] for c in oid["classes"]))
    notes.append(f"COCO protocol computed with {COCO_BACKEND}")
    return results, per_class_results, notes


def voc_ground_truth(samples: Sequence) -> list[dict]:
    """Per-image ground truth for :func:`icm.voc_eval.voc_map` and
    :func:`icm.ap_bootstrap.image_matches`: crowd and group-of boxes count as difficult."""
    return [{"boxes": s.boxes, "labels": s.labels, "difficult": s.difficult | s.iscrowd | s.group} for s in samples]


def group_means(det_results: dict[str, float | None], groups: dict[str, list[str]],
                detectors: list[str]) -> dict[str, float | None]:
    """``<metric>:<group>-mean`` over the detectors of each group, and ``all`` over every
    detector but those of group ``task`` (models of another task, e.g. instance masks). A group
    none of whose detectors has the metric (mask AP of box-only detectors) gets no key."""
    others = [d for d in detectors if d not in groups.get("task", [])]
    groups = {**{g: [d for d in members if d in detectors] for g, members in groups.items()}, "all": others}
    metrics = sorted({key.split(":", 1)[0] for key in det_results})
    out: dict[str, float | None] = {}
    for group, members in groups.items():
        if not members:
            continue
        for metric in metrics:
            keys = [f"{metric}:{d}" for d in members if f"{metric}:{d}" in det_results]
            if not keys:
                continue
            values = [det_results[k] for k in keys if det_results[k] is not None]
            out[f"{metric}:{group}-mean"] = float(np.mean(values)) if values else None
    return out


# ----------------------------------------------------------------------------- result files


def point_record(codec: Any, evaluation: dict[str, Any], settings: dict[str, Any],
                 groups: dict[str, list[str]] | None = None, sidecar: str | None = None) -> dict[str, Any]:
    """One (codec, quality) result in CompressAI's schema (every metric a one-element list);
    ``sidecar``: the file name of its per-image records (same folder)."""
    rate = {"real": "real bitstream", "estimated": "entropy estimation", "raw": "uncompressed"}[codec.rate_type]
    record = {
        "name": result_name(codec),
        "description": f"Inference ({rate}): {codec.description}",
        "format": RESULT_FORMAT,
        "codec": {"name": codec.name, "kind": codec.kind, "rate": codec.rate_type},
        "qualities": [codec.quality],
        "num_images": evaluation["num_images"],
        "settings": settings,
        "detector_groups": groups or {},
        "notes": evaluation["notes"],
        "results": {k: [v] for k, v in evaluation["results"].items()},
        "finished": True,
    }
    if sidecar is not None:
        record["sidecar"] = sidecar
    if "per_class" in evaluation:
        record["per_class"] = [evaluation["per_class"]]
    ms_ssim_notes = [n for n in evaluation["notes"] if n.startswith("ms-ssim")]
    if ms_ssim_notes:
        record["ms-ssim_note"] = ms_ssim_notes[0]
    return record


def merge_points(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge one codec's point records into one curve record (points sorted by quality,
    then bpp); every metric list stays aligned with ``qualities``, and so does ``sidecars``
    (each point's per-image records, relative to the curve file in ``OUT``; None: none)."""
    def key(r):
        q = r["qualities"][0]
        return (q is None, q if q is not None else 0, r["results"]["bpp"][0])

    records = sorted(records, key=key)
    first = records[0]
    metrics: list[str] = []
    for r in records:
        metrics.extend(k for k in r["results"] if k not in metrics)
    curve = {k: v for k, v in first.items()
             if k not in ("results", "qualities", "per_class", "notes", "finished", "ms-ssim_note", "sidecar")}
    curve["settings"] = {k: v for k, v in first.get("settings", {}).items() if k != "codec"}
    curve["description"] = re.sub(r", quality \d+", "", first["description"])
    curve["qualities"] = [r["qualities"][0] for r in records]
    curve["notes"] = sorted({n for r in records for n in r.get("notes", [])})
    ms_ssim_notes = [r["ms-ssim_note"] for r in records if "ms-ssim_note" in r]
    if ms_ssim_notes:
        curve["ms-ssim_note"] = ms_ssim_notes[0]
    curve["results"] = {m: [r["results"].get(m, [None])[0] for r in records] for m in metrics}
    if any("per_class" in r for r in records):
        curve["per_class"] = [r.get("per_class", [None])[0] for r in records]
    if any(r.get("sidecar") for r in records):
        curve["sidecars"] = [f"points/{r['sidecar']}" if r.get("sidecar") else None for r in records]
    return curve


def write_curve(out_dir: Path, codec: Any, settings: dict[str, Any] | None = None,
                warn: bool = True) -> dict[str, Any]:
    """Rewrite ``OUT/<codec>.json`` from the finished point files of that codec.

    With ``settings`` (this run's point settings) only points made with the same settings,
    the per-point ``codec`` description aside, enter the curve: a rerun into the same
    ``--out`` with another dataset, ``--limit`` or detector list must not mix its points
    with the old run's. ``warn``: say how many points were left out.
    """
    name = result_name(codec)
    wanted = None if settings is None else _curve_settings(settings)
    records, skipped = [], 0
    for path in sorted((out_dir / "points").glob("*.json")):
        try:
            record = read_json(path)
        except ValueError:
            continue
        if not (record.get("finished") and record.get("name") == name):
            continue
        if wanted is not None and _curve_settings(record.get("settings") or {}) != wanted:
            skipped += 1
            continue
        records.append(record)
    if skipped and warn:
        warnings.warn(f"{curve_path(out_dir, codec)}: left out {skipped} point(s) of {name!r} in "
                      f"{out_dir / 'points'} made with other settings", stacklevel=2)
    curve = merge_points(records)
    atomic_write_json(curve_path(out_dir, codec), curve)
    return curve


def _curve_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings shared by every point of one curve (the per-point ``codec`` description
    names the quality or checkpoint), as they read back from JSON (tuples become lists)."""
    return json.loads(json.dumps({k: v for k, v in settings.items() if k != "codec"}))


def is_finished(path: Path, settings: dict[str, Any]) -> bool:
    """Whether ``path`` holds a finished result made with the same ``settings``."""
    if not path.is_file():
        return False
    try:
        record = read_json(path)
    except ValueError:
        return False
    if not record.get("finished"):
        return False
    if record.get("settings") != json.loads(json.dumps(settings)):
        warnings.warn(f"{path}: made with other settings; evaluating again", stacklevel=2)
        return False
    return True


def run_evaluation(
    specs: Sequence[CodecSpec],
    dataset: DetectionDataset,
    detectors: dict[str, Any],
    out_dir: str | os.PathLike,
    settings: dict[str, Any],
    device: torch.device | str = "cpu",
    metric: str = "mse",
    estimate: bool = False,
    batch_size: int = 8,
    per_class: bool = False,
    groups: dict[str, list[str]] | None = None,
    mask_ground_truth: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    backbone: str | None = None,
) -> list[Path]:
    """Evaluate every codec of every spec; write point and curve files. Returns the curve
    files written. Finished points with the same settings are skipped (resume)."""
    out_dir = Path(out_dir)
    device = torch.device(device)
    curves: list[Path] = []
    for spec in specs:
        last = None
        for codec in iter_codecs(spec, device, metric=metric, estimate=estimate, backbone=backbone):
            path = point_path(out_dir, codec)
            point_settings = {**settings, "codec": codec.description}
            if not isinstance(codec, LearnedCodec):
                point_settings.pop("estimate", None)  # --estimate only changes learned codecs
            if not overwrite and is_finished(path, point_settings):
                if progress:
                    print(f"{path}: finished, skipped")
            else:
                evaluation = evaluate_codec(
                    codec, dataset, detectors, device=device, batch_size=batch_size, per_class=per_class,
                    groups=groups, mask_ground_truth=mask_ground_truth, progress=progress,
                )
                sidecar = sidecar_path(path)  # first: a finished point file has its records
                evaluation["samples"].save(sidecar)
                if "shard" in settings:  # the merge recomputes every metric from the predictions
                    save_predictions(predictions_path(path), evaluation["predictions"], evaluation["predictable"])
                atomic_write_json(path, point_record(codec, evaluation, point_settings, groups, sidecar.name))
                if progress:
                    print(_one_line(codec, evaluation["results"]))
            write_curve(out_dir, codec, point_settings, warn=False)  # the curve so far
            last = codec, point_settings
            if curve_path(out_dir, codec) not in curves:
                curves.append(curve_path(out_dir, codec))
        if last is not None:  # once more, warning once about points of other runs left out
            write_curve(out_dir, *last)
    return curves


def _one_line(codec: Any, results: dict[str, Any]) -> str:
    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    quality = "" if codec.quality is None else f" q{codec.quality}"
    parts = [f"{result_name(codec)}{quality}:", f"bpp {fmt(results['bpp'])}",
             f"PSNR {fmt(results['psnr-rgb'])}", f"MS-SSIM {fmt(results['ms-ssim-rgb'])}"]
    parts += [f"{k} {fmt(v)}" for k, v in results.items() if k.startswith("map-") and k.endswith("all-mean")]
    return " ".join(parts)

