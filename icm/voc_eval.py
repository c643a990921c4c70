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
too (as the COCO protocol's in ``Evaluation/coco_eval.py``), so that means over detectors or
datasets skip it instead of averaging in a 0.

Used by the evaluation stage and, every epoch, by the detector trainer.
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


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against ``boxes`` [N, 4]."""
    ix1 = np.maximum(boxes[:, 0], box[0])
    iy1 = np.maximum(boxes[:, 1], box[1])
    ix2 = np.minimum(boxes[:, 2], box[2])
    iy2 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def class_ap(
    gt_boxes: Sequence[np.ndarray],
    gt_difficult: Sequence[np.ndarray],
    det_image: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> tuple[float | None, int]:
    """AP of one class. ``gt_boxes[i]``/``gt_difficult[i]``: that class's boxes in image i;
    ``det_image`` [D]: image index of each detection. Returns (AP or None, #positives)."""
    num_pos = int(sum((~np.asarray(d, dtype=bool)).sum() for d in gt_difficult))
    if num_pos == 0:
        return None, 0
    matched = [np.zeros(len(b), dtype=bool) for b in gt_boxes]
    order = np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="stable")
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, d in enumerate(order):
        i = int(det_image[d])
        gts = gt_boxes[i]
        if len(gts) == 0:
            fp[rank] = 1
            continue
        ious = box_iou(det_boxes[d], gts)
        j = int(np.argmax(ious))
        if ious[j] >= iou_threshold:
            if gt_difficult[i][j]:
                continue  # a match with a difficult box is neither a TP nor an FP
            if not matched[i][j]:
                tp[rank] = 1
                matched[i][j] = True
            else:
                fp[rank] = 1
        else:
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / num_pos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return average_precision(recall, precision, use_07_metric), num_pos


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
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection lists")
    gts = [_as_numpy(g, ("boxes", "labels", "difficult")) for g in ground_truth]
    dets = [_as_numpy(d, ("boxes", "scores", "labels")) for d in detections]
    aps: list[float | None] = []
    positives: list[int] = []
    for c in range(num_classes):
        gt_boxes = [g["boxes"][g["labels"] == c] for g in gts]
        gt_difficult = [g["difficult"][g["labels"] == c] for g in gts]
        det_image, det_boxes, det_scores = [], [], []
        for i, d in enumerate(dets):
            keep = d["labels"] == c
            det_boxes.append(d["boxes"][keep])
            det_scores.append(d["scores"][keep])
            det_image.append(np.full(int(keep.sum()), i))
        ap, n = class_ap(
            gt_boxes, gt_difficult, np.concatenate(det_image),
            np.concatenate(det_boxes).reshape(-1, 4), np.concatenate(det_scores),
            iou_threshold, use_07_metric,
        )
        aps.append(ap)
        positives.append(n)
    valid = [a for a in aps if a is not None]
    return VOCResult(float(np.mean(valid)) if valid else None, aps, positives)


def _as_numpy(record: dict, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
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
