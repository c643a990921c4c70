"""COCO reader: an instances JSON through pycocotools.

Category ids are mapped to contiguous indices 0..K-1 in increasing id order (for COCO 2017
this is the 80-class order of :data:`icm.data.classmaps.COCO_CLASSES`); the dataset's
``class_ids`` keeps the original id of each index, which is what a COCO results file
must contain. Sample ids are the COCO image ids as strings, so ``int(sample.id)`` is the
``image_id`` of a result. Boxes go from COCO ``[x, y, w, h]`` to ``[x, y, x + w, y + h]``;
both are 0-based continuous pixel coordinates.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path

from pycocotools.coco import COCO

from icm.data.common import ReadReport, image_size, make_sample
from icm.data.records import DetectionDataset
from icm.io import read_json


def read_coco(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    skip_unknown: bool = False,
    skip_missing: bool = False,
    name: str | None = None,
    select: Callable[[int], bool] | None = None,
) -> DetectionDataset:
    """Read a COCO instances file into a :class:`DetectionDataset` (images sorted by id).

    Every image is kept, with or without annotations; ``iscrowd`` is kept per box.
    Width and height come from the image entry, or the image header without them.
    Errors name the file: malformed JSON (line and column), a missing or ill-typed key
    (naming it and the entry), a missing image (or, with ``skip_missing``, the image is
    skipped and counted), and an annotation whose ``category_id`` is not among the
    categories (or, with ``skip_unknown``, skipped and counted). Boxes outside the image
    are clipped, boxes with no area dropped; the counts come in one warning.
    ``select(position)`` keeps only some positions of the id-sorted image list.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    data = read_json(ann_file)
    _check_coco_json(data, ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()

    category_ids = sorted(coco.cats)
    index_of = {cat_id: i for i, cat_id in enumerate(category_ids)}
    report = ReadReport()
    samples = []
    for position, image_id in enumerate(sorted(coco.imgs)):
        if select is not None and not select(position):
            continue
        info = coco.imgs[image_id]
        image_path = image_dir / info["file_name"]
        if not image_path.is_file():
            if skip_missing:
                report.missing_images += 1
                continue
            raise FileNotFoundError(f"{image_path}: image file not found (image {image_id} of {ann_file})")
        width, height = info.get("width", 0), info.get("height", 0)
        if not width or not height:
            width, height = image_size(image_path)
        boxes, labels, iscrowd = [], [], []
        for ann in coco.imgToAnns.get(image_id, []):
            if ann["category_id"] not in index_of:
                if skip_unknown:
                    report.unknown_objects += 1
                    continue
                raise ValueError(
                    f"{ann_file}: annotation {ann.get('id')} has unknown category_id "
                    f"{ann['category_id']} (pass skip_unknown=True to skip such annotations)"
                )
            x, y, w, h = ann["bbox"]
            boxes.append([x, y, x + w, y + h])
            labels.append(index_of[ann["category_id"]])
            iscrowd.append(bool(ann.get("iscrowd", 0)))
        samples.append(
            make_sample(str(image_id), image_path, width, height, boxes, labels, report, iscrowd=iscrowd)
        )
    dataset_name = name or ann_file.stem
    report.warn(dataset_name)
    return DetectionDataset(
        name=dataset_name,
        classes=[coco.cats[c]["name"] for c in category_ids],
        samples=samples,
        class_ids=category_ids,
        mask_file=ann_file if any("segmentation" in a for a in data.get("annotations", [])) else None,
    )


def _check_coco_json(data: object, ann_file: Path) -> None:
    """Raise an error naming the file, entry and key for the structure pycocotools assumes."""
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file}: expected a JSON object at the top level")
    required = {
        "images": ("id", "file_name"),
        "categories": ("id", "name"),
        "annotations": ("id", "image_id", "category_id", "bbox"),
    }
    for key, fields in required.items():
        if key == "annotations" and key not in data:
            data[key] = []  # an image-info file (e.g. test-dev) has no annotations
        entries = data.get(key)
        if not isinstance(entries, list):
            raise ValueError(f"{ann_file}: key {key!r} missing or not a list")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(f"{ann_file}: {key}[{i}] is not an object")
            for field in fields:
                if field not in entry:
                    raise ValueError(f"{ann_file}: {key}[{i}] has no {field!r}")
    image_ids = {img["id"] for img in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
            raise ValueError(f"{ann_file}: annotations[{i}] 'bbox' is not [x, y, w, h]: {bbox!r}")
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{ann_file}: annotations[{i}] refers to unknown image_id {ann['image_id']}")
