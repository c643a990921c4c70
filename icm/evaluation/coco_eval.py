"""COCO-protocol detection accuracy (AP@[.5:.95], AP50, AP75) through pycocotools.

The ground truth is built from a :class:`~icm.data.records.DetectionDataset` (``iscrowd``
respected; VOC ``difficult`` and Open Images ``IsGroupOf`` boxes are passed as crowd regions:
detections inside them are neither true nor false positives) and the
detections from the detectors' predictions. Where the dataset carries COCO category ids,
both use them, so a written results file matches the official annotations. When the
``faster_coco_eval`` package is importable (it is in the requirements) it is used instead:
the same numbers, computed in C++ (``tests/test_evaluation_coco_eval.py`` cross-checks the
two backends); ``backend=`` picks one explicitly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils  # RLE encoding (faster_coco_eval reads it too)

BACKENDS = ("faster_coco_eval", "pycocotools")
BACKEND = "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def category_ids_of(dataset) -> list[int]:
    """COCO category id of each contiguous class index: the dataset's own ids when it has
    them (COCO data: integer ``class_ids``), else 1..K (e.g. Open Images MIDs)."""
    if _has_coco_ids(dataset):
        return [int(i) for i in dataset.class_ids]
    return list(range(1, len(dataset.classes) + 1))


def _has_coco_ids(dataset) -> bool:
    ids = getattr(dataset, "class_ids", None)
    return bool(ids) and all(isinstance(i, int) for i in ids)


def image_ids_of(dataset, samples: Sequence) -> list[int]:
    """COCO image id of each sample: the original ids for COCO data (numeric sample ids and
    ``class_ids``), else 1..N in order."""
    if _has_coco_ids(dataset) and all(str(s.id).isdigit() for s in samples):
        return [int(s.id) for s in samples]
    return list(range(1, len(samples) + 1))


def coco_ground_truth(samples: Sequence, classes: Sequence[str],
                      category_ids: Sequence[int] | None = None,
                      image_ids: Sequence[int] | None = None) -> dict:
    """A COCO ``instances`` dict (boxes only) for ``samples``; image ids 1..N in sample
    order unless ``image_ids`` are given."""
    category_ids = list(category_ids or range(1, len(classes) + 1))
    image_ids = list(image_ids or range(1, len(samples) + 1))
    images, annotations = [], []
    for i, s in enumerate(samples):
        image_id = image_ids[i]
        images.append({"id": image_id, "width": int(s.width), "height": int(s.height),
                       "file_name": str(s.image_path.name)})
        crowd = np.asarray(s.iscrowd, bool) | np.asarray(s.difficult, bool) | np.asarray(s.group, bool)
        for j, (box, label) in enumerate(zip(_xywh(s.boxes), s.labels)):
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_ids[int(label)],
                "bbox": [float(v) for v in box],
                "area": float(box[2] * box[3]),
                "iscrowd": int(crowd[j]),
            }
            annotations.append(ann)
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def mask_ground_truth_for(ground_truth: dict, samples: Sequence, image_ids: Sequence[int], source: str) -> dict:
    """A COCO instances file's masks for the evaluated ``samples``: its images matched to the
    samples by file name and renumbered to the evaluation's ``image_ids``; images not
    evaluated are left out. A sample without an image entry is a one-line error naming
    ``source``."""
    by_name = {Path(s.image_path).name: image_id for s, image_id in zip(samples, image_ids)}
    renumber = {img["id"]: by_name[img["file_name"]] for img in ground_truth.get("images", [])
                if img.get("file_name") in by_name}
    found = {img["file_name"] for img in ground_truth.get("images", []) if img["id"] in renumber}
    missing = sorted(set(by_name) - found)
    if missing:
        raise ValueError(f"{source}: no entry for {len(missing)} of the {len(by_name)} evaluated images "
                         f"(e.g. {missing[0]}): a masks file of another split or set?")
    images = [{**img, "id": renumber[img["id"]]} for img in ground_truth["images"] if img["id"] in renumber]
    annotations = [{**a, "image_id": renumber[a["image_id"]]} for a in ground_truth.get("annotations", [])
                   if a["image_id"] in renumber]
    return {**ground_truth, "images": images, "annotations": annotations}


def masks_to_rle(masks) -> list[dict]:
    """Instance masks [N, (1,) H, W] (probabilities or bool; > 0.5 is inside) -> COCO RLEs."""
    masks = _numpy(masks)
    out = []
    for m in masks.reshape(-1, masks.shape[-2], masks.shape[-1]):
        rle = mask_utils.encode(np.asfortranarray((m > 0.5).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append(rle)
    return out


def coco_detections(predictions: Sequence[dict], category_ids: Sequence[int],
                    image_ids: Sequence[int] | None = None, with_masks: bool = False) -> list[dict]:
    """COCO results list from per-image predictions (image ids 1..N in order unless given).

    With ``with_masks`` each detection carries its mask: ``segmentation`` (a list of RLEs,
    see :func:`masks_to_rle`) or ``masks`` from the prediction.
    """
    image_ids = list(image_ids or range(1, len(predictions) + 1))
    out = []
    for i, pred in enumerate(predictions):
        boxes = _xywh(_numpy(pred["boxes"]))
        scores = _numpy(pred["scores"]).reshape(-1)
        labels = _numpy(pred["labels"]).reshape(-1)
        rles = None
        if with_masks:
            rles = pred["segmentation"] if "segmentation" in pred else masks_to_rle(pred["masks"])
        for j in range(len(boxes)):
            det = {"image_id": image_ids[i], "category_id": int(category_ids[int(labels[j])]),
                   "bbox": [float(v) for v in boxes[j]], "score": float(scores[j])}
            if rles is not None:
                det["segmentation"] = rles[j]
            out.append(det)
    return out


def _backend_classes(backend: str):
    """(COCO, COCOeval) of ``backend``."""
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"unknown COCO backend {backend!r} (one of {', '.join(BACKENDS)})")
    return COCO, COCOeval


def coco_map(ground_truth: dict, detections: list[dict], iou_type: str = "bbox",
             per_class: bool = False, image_ids: Sequence[int] | None = None, backend: str | None = None) -> dict:
    """Run COCOeval; returns ``map`` (AP@[.5:.95]), ``ap50``, ``ap75`` (None when the
    ground truth has no object) and, with ``per_class``, ``ap_per_class`` {name: AP}.

    ``image_ids`` restricts the evaluation to those images (e.g. the evaluated subset of
    an official annotation file, for mask AP); ``backend``: :data:`BACKENDS` (None: the
    module's :data:`BACKEND`).
    """
    backend = backend or BACKEND
    COCO, COCOeval = _backend_classes(backend)
    if image_ids is not None:
        keep = set(image_ids)
        ground_truth = {**ground_truth,
                        "images": [im for im in ground_truth["images"] if im["id"] in keep],
                        "annotations": [a for a in ground_truth["annotations"] if a["image_id"] in keep]}
    no_gt = not any(not a.get("iscrowd", 0) for a in ground_truth["annotations"])
    if no_gt:
        return {"map": None, "ap50": None, "ap75": None}
    if not detections:
        out = {"map": 0.0, "ap50": 0.0, "ap75": 0.0}
        if per_class:
            out["ap_per_class"] = {c["name"]: 0.0 for c in ground_truth["categories"]}
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        gt = _coco_from_dict(ground_truth, COCO, backend)
        dt = gt.loadRes(detections)
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    out = {"map": float(stats[0]), "ap50": float(stats[1]), "ap75": float(stats[2])}
    if per_class:
        precision = evaluator.eval["precision"]  # [IoU, recall, class, area, maxDets]
        ap_per_class = {}
        for k, cat_id in enumerate(evaluator.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            ap_per_class[gt.cats[cat_id]["name"]] = float(p.mean()) if p.size else None
        out["ap_per_class"] = ap_per_class
    return out


def _coco_from_dict(data: dict, COCO, backend: str):  # noqa: N803 - the backend's class
    if backend == "faster_coco_eval":
        return COCO(data)
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco
