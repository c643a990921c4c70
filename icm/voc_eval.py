"""PASCAL VOC detection mAP@0.5: VOC2007 11-point and VOC2012 all-point interpolated AP.

Our own implementation of the VOC devkit's ``VOCevaldet`` rules (no VOC devkit exists on
PyPI): detections of a class are ranked by score over the whole set; each is matched to the
ground-truth box of that class with the highest IoU in its image; IoU >= 0.5 with an
unmatched box is a true positive, with an already matched box a false positive (duplicate),
with a ``difficult`` box neither (ignored); difficult boxes do not count as positives.
Boxes are continuous xyxy pixel coordinates and IoU has no +1 pixel (as in pycocotools and
torchvision); the data layer maps VOC's inclusive ``xmin..xmax`` to ``xmin - 1..xmax``, so a
ground-truth box keeps the devkit's (+1) width and height. Classes without any non-difficult ground truth
have no AP (None) and are left out of the mean; without any ground truth at all the mAP is None
too (as the COCO protocol's in ``icm/evaluation/coco_eval.py``), so that means over detectors or
datasets skip it instead of averaging in a 0.

Used by the evaluation stage, by ``icm/ap_bootstrap.py`` (per-detection flags for bootstrap
intervals) and, every epoch, by the detector trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class VOCResult:
    """mAP over classes with ground truth (None: no class has any), and AP per class
    (None: no ground truth)."""

    map: float | None
    ap_per_class: list[float | None]
    num_positives: list[int]


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP of a precision/recall curve (both in detection-rank order).

    VOC2007: mean over recall thresholds 0, 0.1, ..., 1 of the highest precision at recall
    >= threshold. VOC2012 (all-point): area under the precision envelope (precision made
    monotonically decreasing), summed where recall changes.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            above = precision[recall >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def match_detections(
    gt_boxes: Sequence[np.ndarray],
    gt_difficult: Sequence[np.ndarray],
    det_image: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy VOC matching of one class's detections in decreasing score order (ties keep
    the input order). ``gt_boxes[i]``/``gt_difficult[i]``: that class's boxes in image i;
    ``det_image`` [D]: image index of each detection. Returns ``(order, flags)``: the
    detection indices by rank, and per rank 1 (true positive), 0 (false positive: no box
    at ``iou_threshold``, or a duplicate) or -1 (ignored: best match is a difficult box).

    Vectorised: each detection's best box comes from one padded IoU array; a box's first
    claimant in rank order is its true positive, any later one a duplicate (the greedy
    loop's outcome, since a detection's best box does not depend on earlier matches)."""
    order = np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="stable")
    flags = np.zeros(len(order), dtype=np.int8)
    counts = np.array([len(b) for b in gt_boxes], dtype=np.int64)
    if len(order) == 0 or counts.max(initial=0) == 0:
        return order, flags
    padded = np.zeros((len(gt_boxes), int(counts.max()), 4))
    difficult = np.zeros(padded.shape[:2], dtype=bool)
    for i, (boxes, hard) in enumerate(zip(gt_boxes, gt_difficult)):
        padded[i, : len(boxes)] = boxes
        difficult[i, : len(boxes)] = hard
    image = np.asarray(det_image, dtype=np.int64)[order]
    dets = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)[order]
    gts = padded[image]  # [D, G, 4]
    w = np.minimum(dets[:, None, 2], gts[..., 2]) - np.maximum(dets[:, None, 0], gts[..., 0])
    h = np.minimum(dets[:, None, 3], gts[..., 3]) - np.maximum(dets[:, None, 1], gts[..., 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = ((dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1]))[:, None] \
        + (gts[..., 2] - gts[..., 0]) * (gts[..., 3] - gts[..., 1]) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    iou[np.arange(gts.shape[1])[None, :] >= counts[image][:, None]] = -1.0  # padding is no box
    best = np.argmax(iou, axis=1)
    hit = iou[np.arange(len(order)), best] >= iou_threshold
    hard = hit & difficult[image, best]
    flags[hard] = -1
    claims = np.nonzero(hit & ~hard)[0]  # ranks, ascending
    _, first = np.unique(image[claims] * gts.shape[1] + best[claims], return_index=True)
    flags[claims[first]] = 1
    return order, flags


def voc_matches(
    ground_truth: Sequence[dict],
    detections: Sequence[dict],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """Every detection's VOC match (inputs as :func:`voc_map`). Returns, over the detections
    of all images in order (labels outside ``0..num_classes - 1`` left out): ``image``,
    ``label``, ``score``, ``boxes`` and ``flag`` (see :func:`match_detections`), and
    ``positives`` [N images, num_classes]: the non-difficult boxes."""
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection lists")
    gts = [as_arrays(g, ("boxes", "labels", "difficult")) for g in ground_truth]
    dets = [as_arrays(d, ("boxes", "scores", "labels")) for d in detections]
    dets = [{k: v[(d["labels"] >= 0) & (d["labels"] < num_classes)] for k, v in d.items()} for d in dets]
    out = {
        "image": np.repeat(np.arange(len(dets)), [len(d["labels"]) for d in dets]),
        "label": np.concatenate([d["labels"] for d in dets] + [np.zeros(0, np.int64)]),
        "score": np.concatenate([d["scores"] for d in dets] + [np.zeros(0)]),
        "boxes": np.concatenate([d["boxes"] for d in dets] + [np.zeros((0, 4))]),
    }
    out["flag"] = np.zeros(len(out["label"]), dtype=np.int8)
    out["positives"] = np.zeros((len(gts), num_classes), dtype=np.int64)
    for c in range(num_classes):
        gt_boxes = [g["boxes"][g["labels"] == c] for g in gts]
        gt_difficult = [g["difficult"][g["labels"] == c] for g in gts]
        out["positives"][:, c] = [int((~d).sum()) for d in gt_difficult]
        idx = np.nonzero(out["label"] == c)[0]
        order, flags = match_detections(gt_boxes, gt_difficult, out["image"][idx], out["boxes"][idx],
                                        out["score"][idx], iou_threshold)
        out["flag"][idx[order]] = flags
    return out


def voc_map(
    ground_truth: Sequence[dict],
    detections: Sequence[dict],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> VOCResult:
    """VOC mAP of ``detections`` against ``ground_truth`` (one dict per image, same order).

    Ground truth dicts: ``boxes`` [N, 4], ``labels`` [N], optional ``difficult`` [N] (bool).
    Detection dicts: ``boxes`` [M, 4], ``scores`` [M], ``labels`` [M]. Arrays or tensors.
    ``map`` is None when no image has a non-difficult ground-truth box.
    """
    matches = voc_matches(ground_truth, detections, num_classes, iou_threshold)
    aps: list[float | None] = []
    positives = [int(n) for n in matches["positives"].sum(0)]
    for c, num_pos in enumerate(positives):
        if num_pos == 0:
            aps.append(None)
            continue
        mine = matches["label"] == c
        order = np.argsort(-matches["score"][mine], kind="stable")
        flags = matches["flag"][mine][order]  # in rank order
        tp, fp = np.cumsum(flags == 1), np.cumsum(flags == 0)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(average_precision(tp / num_pos, precision, use_07_metric))
    valid = [a for a in aps if a is not None]
    return VOCResult(float(np.mean(valid)) if valid else None, aps, positives)


def as_arrays(record: dict, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The ``keys`` of a ground-truth or detection dict as numpy arrays (tensors and lists
    too): float64 boxes [N, 4] and scores, int64 labels, bool difficult (all False if absent)."""
    out = {}
    for key in keys:
        value = record.get(key)
        if value is None and key == "difficult":
            value = np.zeros(len(out["labels"]), dtype=bool)
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        out[key] = np.asarray(value)
    out["boxes"] = out["boxes"].astype(np.float64).reshape(-1, 4)
    out["labels"] = out["labels"].astype(np.int64).reshape(-1)
    if "difficult" in out:
        out["difficult"] = out["difficult"].astype(bool).reshape(-1)
    if "scores" in out:
        out["scores"] = out["scores"].astype(np.float64).reshape(-1)
    return out
