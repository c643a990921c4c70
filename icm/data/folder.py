"""A plain folder of images (Kodak, CLIC, an augmented-image folder...): no labels."""

from __future__ import annotations

import os
from pathlib import Path

from icm.data.common import image_size
from icm.data.records import DetectionDataset, DetectionSample
from icm.io import list_images


def read_image_folder(root: str | os.PathLike, name: str | None = None) -> DetectionDataset:
    """Every image under ``root`` (recursive, sorted, hidden files skipped) as a sample
    without objects. Ids are paths relative to ``root`` without the suffix, with ``/``
    kept (``sub/img01``); sizes come from the image headers (EXIF orientation applied)."""
    root = Path(root)
    paths = list_images(root)
    if not paths:
        raise FileNotFoundError(f"{root}: no images found")
    samples: list[DetectionSample] = []
    seen: dict[str, Path] = {}
    for path in paths:
        sample_id = path.relative_to(root).with_suffix("").as_posix()
        if sample_id in seen:
            raise ValueError(f"{seen[sample_id]} and {path} have the same id {sample_id!r}")
        seen[sample_id] = path
        width, height = image_size(path)
        samples.append(DetectionSample(id=sample_id, image_path=path, width=width, height=height))
    return DetectionDataset(name=name or root.name, classes=[], samples=samples)
