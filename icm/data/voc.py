"""PASCAL VOC reader (VOCdevkit layout), also used for the toy set, which has the same layout.

Coordinates. VOC XML gives 1-based, inclusive pixel indices: a box covering the whole
image is ``xmin=1, xmax=W``. We convert to 0-based continuous coordinates, where pixel
``i`` spans ``[i, i+1)``, so that box becomes ``[0, W]``::

    x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax

This keeps the VOC width (``xmax - xmin + 1`` pixels) as ``x2 - x1`` and is the
convention of Detectron2 and of the COCO json boxes. Writing VOC XML from such a box is
the inverse (``xmin = x1 + 1``, ``xmax = x2``), as the toy generator does.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

from icm.data.classmaps import VOC_CLASSES
from icm.data.common import ReadReport, image_size, make_sample
from icm.data.records import DetectionDataset, DetectionSample

__all__ = ["VOC_CLASSES", "read_voc"]


def read_voc(
    root: str | os.PathLike,
    split: str = "trainval",
    years: Sequence[str] = ("2007",),
    classes: Sequence[str] = VOC_CLASSES,
    skip_unknown: bool = False,
    skip_missing: bool = False,
    name: str | None = None,
    select: Callable[[int], bool] | None = None,
) -> DetectionDataset:
    """Read a VOC split into a :class:`DetectionDataset`.

    ``root`` is a VOCdevkit folder holding ``VOC<year>/`` for each of ``years``, each with
    ``ImageSets/Main/<split>.txt``, ``Annotations/<id>.xml`` and ``JPEGImages/``; sample
    ids are ``<year>_<id>`` so they stay unique across years ("2007_000027"). ``root`` may
    also be a single such folder (it has ``ImageSets/Main``): ``years`` is then ignored and
    ids are the plain image ids. The image file is ``JPEGImages/<filename>`` from the XML
    (``<id>.jpg`` without one); width and height come from ``<size>``, or from the image
    header when ``<size>`` is missing or zero. ``<difficult>`` is kept per box.

    Errors name the file: malformed XML (with its line), a missing image list or
    annotation, a missing image (or, with ``skip_missing``, the sample is skipped and
    counted), and an object whose class is not in ``classes`` (or, with ``skip_unknown``,
    the object is skipped and counted). Boxes outside the image are clipped, boxes with no
    area dropped; the counts come in one warning for the dataset. ``select(position)`` keeps
    only some positions of the image list (years in order): the others are not parsed.
    """
    root = Path(root)
    if (root / "ImageSets" / "Main").is_dir():
        folders = [(root, "")]
        default_name = f"{root.name}_{split}"
    else:
        folders = [(root / f"VOC{year}", f"{year}_") for year in years]
        default_name = f"voc{'+'.join(str(y) for y in years)}_{split}"
    class_index = {c: i for i, c in enumerate(classes)}
    report = ReadReport()
    samples = []
    position = -1
    for folder, id_prefix in folders:
        list_file = folder / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"{list_file}: VOC image list not found")
        for line in list_file.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            image_id = line.split()[0]
            position += 1
            if select is not None and not select(position):
                continue
            sample = _read_annotation(
                folder, image_id, id_prefix + image_id, class_index, skip_unknown, skip_missing, report
            )
            if sample is not None:
                samples.append(sample)
    dataset_name = name or default_name
    report.warn(dataset_name)
    return DetectionDataset(name=dataset_name, classes=list(classes), samples=samples)


def _read_annotation(
    folder: Path,
    image_id: str,
    sample_id: str,
    class_index: dict[str, int],
    skip_unknown: bool,
    skip_missing: bool,
    report: ReadReport,
) -> DetectionSample | None:
    """One ``Annotations/<image_id>.xml`` -> a sample (None when its image is skipped)."""
    xml_path = folder / "Annotations" / f"{image_id}.xml"
    if not xml_path.is_file():
        raise FileNotFoundError(f"{xml_path}: annotation file not found")
    try:
        annotation = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        line = e.position[0]
        raise ValueError(f"{xml_path}:{line}: malformed XML ({e})") from e

    image_path = folder / "JPEGImages" / (annotation.findtext("filename") or f"{image_id}.jpg").strip()
    if not image_path.is_file():
        if skip_missing:
            report.missing_images += 1
            return None
        raise FileNotFoundError(f"{image_path}: image file not found (annotated in {xml_path})")
    width = _number(annotation, "size/width", xml_path, default=0)
    height = _number(annotation, "size/height", xml_path, default=0)
    if width <= 0 or height <= 0:
        width, height = image_size(image_path)

    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(annotation.iter("object")):
        class_name = (obj.findtext("name") or "").strip()
        if class_name not in class_index:
            if skip_unknown:
                report.unknown_objects += 1
                continue
            raise ValueError(
                f"{xml_path}: object {k} has unknown class {class_name!r} "
                "(pass skip_unknown=True to skip such objects)"
            )
        if obj.find("bndbox") is None:
            raise ValueError(f"{xml_path}: object {k} ({class_name}) has no <bndbox>")
        xmin, ymin, xmax, ymax = (
            _number(obj, f"bndbox/{key}", xml_path) for key in ("xmin", "ymin", "xmax", "ymax")
        )
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        labels.append(class_index[class_name])
        difficult.append(_number(obj, "difficult", xml_path, default=0) != 0)
    return make_sample(
        sample_id, image_path, int(width), int(height), boxes, labels, report, difficult=difficult
    )


def _number(element: ET.Element, path: str, xml_path: Path, default: float | None = None) -> float:
    """The number at ``path`` under ``element``; ``default`` when absent (error if None)."""
    text = element.findtext(path)
    if text is None or not text.strip():
        if default is None:
            raise ValueError(f"{xml_path}: <{path}> missing")
        return default
    try:
        return float(text)
    except ValueError as e:
        raise ValueError(f"{xml_path}: <{path}> is not a number: {text.strip()!r}") from e
