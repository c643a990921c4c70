"""The Open Images detection challenge metric (OID mAP@0.5), written from its protocol.

What makes it differ from VOC or COCO mAP, step by step:

1. **Class hierarchy.** Ground truth is expanded up the hierarchy
   (``bbox_labels_600_hierarchy.json``): a box of a class is also a box of each of its
   ancestors (a "Man" box is a "Person" box), and so is a positive image-level label; a
   negative image-level label (verified absent) also holds for the class's descendants.
   :func:`class_ancestors` reads the hierarchy, :func:`expand_ground_truth` applies it.
2. **Only verified classes count in an image.** A class is evaluated in an image when it
   has a box there or a verified image-level label (positive or negative). Detections of
   other classes in that image are ignored: they are neither true nor false positives.
3. **Group-of boxes** (``IsGroupOf``: one box around several instances). Detections are
   first matched to the ordinary boxes of their class, by IoU >= 0.5, greedily in score
   order: a detection whose best-IoU box is still free is a true positive; one whose best
   box is taken is a false positive. Each detection left unmatched is then tested against
   the group-of boxes by intersection over the DETECTION's area (IoA) >= 0.5: one that
   falls inside a group-of box is not a false positive; of all those inside one group-of
   box, only the highest score counts, once, as a true positive. A group-of box no
   detection falls into is one missed instance (``group_of_weight`` = 1, the challenge's).
4. **AP per class** over all images where the class is evaluated: precision made
   monotone, the area under the precision-recall curve at every recall step (VOC2010+
   style, "all-point"); the number of positives is the class's ordinary boxes plus its
   group-of boxes. mAP is the mean over the evaluated classes that have at least one box.

Boxes are ``xyxy`` in any consistent unit. The per-image matching is cross-checked in
``tests/test_oid_challenge.py`` against the TensorFlow Object Detection API's
``per_image_evaluation`` where that package can be imported (``make crosscheck-oid``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLD = 0.5
GROUP_OF_WEIGHT = 1.0


@dataclass
class OIDImageTruth:
    """One image's ground truth: boxes ``[N, 4]`` xyxy, their class indices and group-of
    flags, and the class indices verified by image-level labels (positive or negative)."""

    boxes: np.ndarray
    labels: np.ndarray
    group_of: np.ndarray
    verified: set[int] = field(default_factory=set)

    def evaluated_classes(self) -> set[int]:
        """Classes evaluated in this image: verified, or holding a box."""
        return set(self.verified) | {int(c) for c in self.labels}


# ----------------------------------------------------------------------------- hierarchy


def class_ancestors(hierarchy: dict) -> dict[str, set[str]]:
    """{label: its ancestors} from the challenge's hierarchy JSON (nested ``LabelName`` /
    ``Subcategory``; the root entity is no class and is left out)."""
    ancestors: dict[str, set[str]] = {}

    def walk(node: dict, above: tuple[str, ...]) -> None:
        for child in node.get("Subcategory", []):
            name = child["LabelName"]
            ancestors.setdefault(name, set()).update(above)
            walk(child, above + (name,))

    walk(hierarchy, ())
    return ancestors


def class_descendants(ancestors: dict[str, set[str]]) -> dict[str, set[str]]:
    """{label: its descendants}, the inverse of :func:`class_ancestors`."""
    descendants: dict[str, set[str]] = {label: set() for label in ancestors}
    for label, above in ancestors.items():
        for parent in above:
            descendants.setdefault(parent, set()).add(label)
    return descendants


def expand_ground_truth(labels: Sequence[str], boxes: np.ndarray, group_of: np.ndarray, positive: Iterable[str],
                        negative: Iterable[str], ancestors: dict[str, set[str]]
                        ) -> tuple[list[str], np.ndarray, np.ndarray, set[str], set[str]]:
    """Boxes and image-level labels of one image, expanded up the hierarchy (step 1):
    each box repeated for each ancestor of its class, positive labels with their ancestors,
    negative labels with their descendants."""
    descendants = class_descendants(ancestors)
    out_labels, out_boxes, out_group = [], [], []
    for label, box, group in zip(labels, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), group_of):
        for name in (label, *sorted(ancestors.get(label, ()))):
            out_labels.append(name)
            out_boxes.append(box)
            out_group.append(bool(group))
    pos = set(positive)
    pos |= {a for label in list(pos) for a in ancestors.get(label, ())}
    neg = set(negative)
    neg |= {d for label in list(neg) for d in descendants.get(label, ())}
    return (out_labels, np.asarray(out_boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray(out_group, dtype=bool), pos, neg)


# ----------------------------------------------------------------------------- matching


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] intersection areas."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def match_one_class(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray, gt_group_of: np.ndarray,
                    iou_threshold: float = IOU_THRESHOLD, group_of_weight: float = GROUP_OF_WEIGHT
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Step 3 for one class in one image: (scores, true-positive weights) of the detections
    that count, the group-of credits included; detections inside a group-of box that earn
    no credit are left out. Detections are taken in descending score order."""
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_group_of = np.asarray(gt_group_of, dtype=bool).reshape(-1)
    if len(det_boxes) == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-det_scores, kind="stable")
    det_boxes, det_scores = det_boxes[order], det_scores[order]
    ordinary, groups = gt_boxes[~gt_group_of], gt_boxes[gt_group_of]
    true_positive = np.zeros(len(det_boxes), dtype=bool)
    if len(ordinary):
        inter = _intersection(det_boxes, ordinary)
        iou = inter / (_area(det_boxes)[:, None] + _area(ordinary)[None, :] - inter)
        taken = np.zeros(len(ordinary), dtype=bool)
        for i, best in enumerate(np.argmax(iou, axis=1)):
            if iou[i, best] >= iou_threshold and not taken[best]:
                true_positive[i] = taken[best] = True
    inside_group = np.zeros(len(det_boxes), dtype=bool)
    group_scores = np.zeros(len(groups))
    if len(groups):
        area = _area(det_boxes)
        ioa = _intersection(det_boxes, groups) / np.where(area > 0, area, np.inf)[:, None]
        for i, best in enumerate(np.argmax(ioa, axis=1)):
            if not true_positive[i] and ioa[i, best] >= iou_threshold:
                inside_group[i] = True
                group_scores[best] = max(group_scores[best], det_scores[i])
    credited = group_scores > 0 if group_of_weight > 0 else np.zeros(len(groups), dtype=bool)
    keep = ~inside_group
    scores = np.concatenate([det_scores[keep], group_scores[credited]])
    weights = np.concatenate([true_positive[keep].astype(np.float64), np.full(int(credited.sum()), group_of_weight)])
    return scores, weights


def average_precision(scores: np.ndarray, tp_weights: np.ndarray, num_positives: float) -> float:
    """Step 4: all-point AP of detections (``scores``, true-positive weights in [0, 1]) for
    ``num_positives`` ground-truth instances; NaN without positives."""
    if num_positives <= 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(tp_weights, dtype=np.float64)[order]
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(tp <= 0)  # a group-of credit is never a false positive
    precision = tp_cum / (tp_cum + fp_cum)
    recall = tp_cum / num_positives
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def oid_challenge_map(truths: Sequence[OIDImageTruth], predictions: Sequence[dict], num_classes: int,
                      classes: Iterable[int] | None = None, iou_threshold: float = IOU_THRESHOLD,
                      group_of_weight: float = GROUP_OF_WEIGHT) -> dict:
    """The challenge mAP of ``predictions`` (per image: ``boxes`` xyxy, ``scores``,
    ``labels`` as class indices) against ``truths`` (hierarchy already expanded). Returns
    ``map`` (mean over the evaluated classes with positives; None when there are none),
    ``ap_per_class`` {class index: AP} and ``classes`` (those averaged). ``classes``
    restricts the evaluation to a subset (e.g. what a COCO detector can predict)."""
    subset = set(range(num_classes)) if classes is None else {int(c) for c in classes}
    scores: dict[int, list[np.ndarray]] = {c: [] for c in subset}
    weights: dict[int, list[np.ndarray]] = {c: [] for c in subset}
    positives = dict.fromkeys(subset, 0.0)
    for truth, pred in zip(truths, predictions, strict=True):
        labels = np.asarray(truth.labels).reshape(-1)
        det_labels = np.asarray(pred["labels"]).reshape(-1)
        det_boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
        det_scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
        for c in truth.evaluated_classes() & subset:
            gt = labels == c
            group = np.asarray(truth.group_of, dtype=bool)[gt]
            positives[c] += float((~group).sum()) + group_of_weight * float(group.sum())
            mine = det_labels == c
            s, w = match_one_class(det_boxes[mine], det_scores[mine], np.asarray(truth.boxes)[gt], group,
                                   iou_threshold, group_of_weight)
            scores[c].append(s)
            weights[c].append(w)
    ap = {c: average_precision(np.concatenate(scores[c] or [np.zeros(0)]), np.concatenate(weights[c] or [np.zeros(0)]),
                               positives[c]) for c in sorted(subset)}
    averaged = [c for c, value in ap.items() if not np.isnan(value)]
    return {"map": float(np.mean([ap[c] for c in averaged])) if averaged else None,
            "ap_per_class": {c: (None if np.isnan(v) else v) for c, v in ap.items()}, "classes": averaged}
