"""Open Images (OID) reader: the box CSV, the class-descriptions CSV and an image folder.

The box CSV has one row per box with the columns ``ImageID, Source, LabelName,
Confidence, XMin, XMax, YMin, YMax, IsOccluded, IsTruncated, IsGroupOf, IsDepiction,
IsInside``; coordinates are normalised to [0, 1], so each image's size is read from its
file header (no decoding). Only ``ImageID, LabelName, XMin, XMax, YMin, YMax`` are
required; ``IsGroupOf`` becomes the sample's ``group`` flag; the other flags and
``Confidence`` (always 1 for human-verified boxes) are not kept. For the Open Images
metric (``icm.evaluation.oid_challenge``) two more files are read when given: the
human-verified image-level labels (``ImageID, Source, LabelName, Confidence``; 1 present,
0 absent; each sample's ``verified`` classes) and the class hierarchy
(``bbox_labels_600_hierarchy.json``), by which boxes and present labels are expanded to
their ancestors and absent labels to their descendants (among the dataset's classes). The class-descriptions
CSV maps a label MID to its display name (``/m/0k4j,Car``), with or without a
``LabelName,DisplayName`` header. The official image-id file's ``Rotation`` column is not
applied: boxes are taken as drawn on the image as stored (after EXIF orientation).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from icm.data.common import ReadReport, image_size, make_sample
from icm.data.records import DetectionDataset
from icm.io import list_images, read_json

BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")


def read_oid(
    box_csv: str | os.PathLike,
    class_csv: str | os.PathLike,
    image_dir: str | os.PathLike,
    image_ids: str | os.PathLike | Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    skip_unknown: bool = False,
    skip_missing: bool = False,
    name: str | None = None,
    image_labels_csv: str | os.PathLike | None = None,
    hierarchy_json: str | os.PathLike | None = None,
    select: Callable[[int], bool] | None = None,
) -> DetectionDataset:
    """Read Open Images boxes into a :class:`DetectionDataset` (samples sorted by id).

    The images are ``image_ids`` (a list, or a file with one id per line or a CSV with an
    ``ImageID`` column, such as the official ``*-images-with-rotation.csv``), looked up as
    ``image_dir/<id>.jpg``; without it, every image found under ``image_dir``. Box rows of
    other images are ignored; an image without rows is a sample without objects.
    ``classes`` (display names, case-insensitive, or MIDs) keeps a subset of classes in
    that order (rows of the others are ignored); by default all classes of ``class_csv``
    in file order. The dataset's ``class_ids`` are the MIDs.

    Errors name the file and line: malformed rows, missing columns, a missing image (or,
    with ``skip_missing``, the image is skipped and counted), and a ``LabelName`` absent
    from ``class_csv`` (or, with ``skip_unknown``, the row is skipped and counted). Boxes
    outside the image are clipped, boxes with no area dropped; counts in one warning.
    ``select(position)`` keeps only some positions of the id-sorted image list: the box and
    label rows of the others are skipped as they are read.
    """
    box_csv, class_csv, image_dir = Path(box_csv), Path(class_csv), Path(image_dir)
    descriptions = read_class_descriptions(class_csv)
    if classes is None:
        mids = list(descriptions)
    else:
        mids = [_find_class(c, descriptions, class_csv) for c in classes]
    class_index = {mid: i for i, mid in enumerate(mids)}

    report = ReadReport()
    if image_ids is None:
        found = sorted(list_images(image_dir), key=lambda p: p.stem)
        image_paths = {p.stem: p for i, p in enumerate(found) if select is None or select(i)}
    else:
        ids = read_image_ids(image_ids) if isinstance(image_ids, str | os.PathLike) else list(image_ids)
        if select is not None:  # positions in the sorted list of distinct ids, as the full read orders them
            ids = [image_id for i, image_id in enumerate(sorted(set(ids))) if select(i)]
        image_paths = {}
        for image_id in ids:
            path = image_dir / f"{image_id}.jpg"
            if path.is_file():
                image_paths[image_id] = path
            elif skip_missing:
                report.missing_images += 1
            else:
                raise FileNotFoundError(f"{path}: image file not found (listed in {image_ids})")

    rows_by_image = _read_boxes(box_csv, set(image_paths), descriptions, class_index, skip_unknown, report)
    ancestors = _class_ancestors_by_index(hierarchy_json, mids) if hierarchy_json is not None else {}
    labels_by_image = (_read_image_labels(image_labels_csv, set(image_paths), class_index)
                       if image_labels_csv is not None else {})
    samples = []
    for image_id in sorted(image_paths):
        path = image_paths[image_id]
        width, height = image_size(path)
        rows = rows_by_image.get(image_id, [])
        boxes, labels, group = [], [], []
        for x1, y1, x2, y2, label, is_group in rows:  # each box, and again for each ancestor class
            for cls in (label, *sorted(ancestors.get(label, ()))):
                boxes.append([x1 * width, y1 * height, x2 * width, y2 * height])
                labels.append(cls)
                group.append(is_group)
        sample = make_sample(image_id, path, width, height, boxes, labels, report, group=group)
        present, absent = labels_by_image.get(image_id, (set(), set()))
        present |= {a for c in list(present) for a in ancestors.get(c, ())}
        absent |= {c for c, above in ancestors.items() if above & absent}
        sample.verified = np.array(sorted(present | absent), dtype=np.int64)
        samples.append(sample)
    dataset_name = name or f"oid_{box_csv.stem}"
    report.warn(dataset_name)
    return DetectionDataset(
        name=dataset_name,
        classes=[descriptions[m] for m in mids],
        samples=samples,
        class_ids=mids,
    )


def _class_ancestors_by_index(path: str | os.PathLike, mids: list[str]) -> dict[int, set[int]]:
    """{class index: indices of its ancestors} among the dataset's classes, from the
    challenge's hierarchy JSON (icm.evaluation.oid_challenge.class_ancestors)."""
    from icm.evaluation.oid_challenge import class_ancestors

    index = {mid: i for i, mid in enumerate(mids)}
    try:
        by_mid = class_ancestors(read_json(path))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a class hierarchy (nested LabelName / Subcategory entries): {e!r}") from e
    return {index[m]: {index[a] for a in above if a in index} for m, above in by_mid.items() if m in index}


def _read_image_labels(path: str | os.PathLike, images: set[str], class_index: dict[str, int]
                       ) -> dict[str, tuple[set[int], set[int]]]:
    """{image id: (classes verified present, classes verified absent)} from a human-verified
    image-level labels CSV; labels of other classes and images are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image-level labels file not found")
    out: dict[str, tuple[set[int], set[int]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("ImageID", "LabelName", "Confidence") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}:1: image-level labels lack the column(s) {', '.join(missing)}")
        try:
            for row in reader:
                if row["ImageID"] not in images or row["LabelName"] not in class_index:
                    continue
                try:
                    confidence = float(row["Confidence"])
                except ValueError as e:
                    raise ValueError(f"{path}:{reader.line_num}: Confidence {row['Confidence']!r} is not a number") from e
                present, absent = out.setdefault(row["ImageID"], (set(), set()))
                (present if confidence > 0 else absent).add(class_index[row["LabelName"]])
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e
    return out


def read_class_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """``{MID: display name}`` in file order, from a ``LabelName,DisplayName`` CSV
    (the header line is optional, as the official file has none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: class-descriptions file not found")
    descriptions: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            for row in reader:
                if not row or (reader.line_num == 1 and row[:2] == ["LabelName", "DisplayName"]):
                    continue
                if len(row) != 2 or not row[0].strip():
                    raise ValueError(f"{path}:{reader.line_num}: expected 'LabelName,DisplayName', got {row!r}")
                descriptions[row[0].strip()] = row[1].strip()
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e
    if not descriptions:
        raise ValueError(f"{path}: no classes")
    return descriptions


def read_image_ids(path: str | os.PathLike) -> list[str]:
    """Image ids from a file with one id per line, or a CSV with an ``ImageID`` column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image-id list not found")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines or "," not in lines[0]:
        return lines
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "ImageID" not in (reader.fieldnames or []):
            raise ValueError(f"{path}:1: CSV image list has no 'ImageID' column")
        try:
            return [row["ImageID"].strip() for row in reader if row["ImageID"]]
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e


def _find_class(wanted: str, descriptions: dict[str, str], class_csv: Path) -> str:
    """The MID of a class given by MID or (case-insensitive) display name."""
    if wanted in descriptions:
        return wanted
    for mid, display_name in descriptions.items():
        if display_name.lower() == wanted.strip().lower():
            return mid
    raise ValueError(f"{class_csv}: no class named {wanted!r}")


def _read_boxes(
    box_csv: Path,
    image_ids: set[str],
    descriptions: dict[str, str],
    class_index: dict[str, int],
    skip_unknown: bool,
    report: ReadReport,
) -> dict[str, list[tuple[float, float, float, float, int, bool]]]:
    """Rows of the images in ``image_ids`` and classes in ``class_index``, per image:
    ``(XMin, YMin, XMax, YMax, label, IsGroupOf)``."""
    if not box_csv.is_file():
        raise FileNotFoundError(f"{box_csv}: box annotation file not found")
    rows_by_image: dict[str, list] = {}
    with open(box_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{box_csv}:1: missing columns {missing} (header: {reader.fieldnames})")
        try:
            for row in reader:
                if None in row or None in row.values():
                    raise ValueError(f"{box_csv}:{reader.line_num}: wrong number of fields")
                if row["ImageID"] not in image_ids:
                    continue
                mid = row["LabelName"]
                if mid not in descriptions:
                    if skip_unknown:
                        report.unknown_objects += 1
                        continue
                    raise ValueError(
                        f"{box_csv}:{reader.line_num}: unknown LabelName {mid!r} "
                        "(pass skip_unknown=True to skip such rows)"
                    )
                if mid not in class_index:
                    continue  # a class outside the requested subset
                try:
                    x1, x2, y1, y2 = (float(row[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
                    group = int(row.get("IsGroupOf") or 0) == 1
                except ValueError as e:
                    raise ValueError(f"{box_csv}:{reader.line_num}: not a number ({e})") from e
                rows_by_image.setdefault(row["ImageID"], []).append((x1, y1, x2, y2, class_index[mid], group))
        except csv.Error as e:
            raise ValueError(f"{box_csv}:{reader.line_num}: malformed CSV ({e})") from e
    return rows_by_image
