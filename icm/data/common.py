"""What every dataset reader shares: image sizes read from file headers, boxes clipped to
the image, and the one warning per dataset that counts what was repaired or skipped."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from icm.data.records import DetectionSample
from icm.io import ImageReadError

_EXIF_ORIENTATION = 0x0112


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`icm.io.read_image` returns it (EXIF
    orientation applied), read from the file header without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.format == "PNG":
                # Pillow's PNG getexif() decodes the image to look past the pixel data; an
                # eXIf chunk before the pixels (the usual place) is already in img.info.
                exif = Image.Exif()
                if img.info.get("exif"):
                    exif.load(img.info["exif"])
            else:
                exif = img.getexif()
            orientation = exif.get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, ImportError) as e:
        # ImportError: once ultralytics is imported, Image.open answers a file Pillow cannot
        # identify by trying to load the pi-heif plugin, which is not installed.
        raise ImageReadError(f"{path}: cannot read image header ({e})") from e
    # Orientations 5..8 rotate by 90 degrees: the decoded image has its sides swapped.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


@dataclass
class ReadReport:
    """Counts of what a reader repaired or skipped while reading one dataset."""

    clipped_boxes: int = 0  # boxes partly outside the image, clipped to it
    dropped_boxes: int = 0  # boxes with no area (degenerate, or outside the image), removed
    unknown_objects: int = 0  # objects of a class not in the dataset's list (skip_unknown)
    missing_images: int = 0  # samples whose image file is missing (skip_missing)

    def warn(self, dataset_name: str) -> None:
        """Issue one warning with every non-zero count (nothing when all are zero)."""
        parts = [
            f"{self.clipped_boxes} boxes clipped to the image" if self.clipped_boxes else "",
            f"{self.dropped_boxes} boxes with no area dropped" if self.dropped_boxes else "",
            f"{self.unknown_objects} objects of unknown classes skipped" if self.unknown_objects else "",
            f"{self.missing_images} samples with missing images skipped" if self.missing_images else "",
        ]
        parts = [p for p in parts if p]
        if parts:
            warnings.warn(f"{dataset_name}: " + ", ".join(parts), stacklevel=3)


def make_sample(
    sample_id: str,
    image_path: Path,
    width: int,
    height: int,
    boxes: list | np.ndarray,
    labels: list | np.ndarray,
    report: ReadReport,
    difficult: list | np.ndarray | None = None,
    iscrowd: list | np.ndarray | None = None,
    group: list | np.ndarray | None = None,
) -> DetectionSample:
    """A :class:`DetectionSample` whose boxes are clipped to ``[0, width] x [0, height]``;
    boxes left with no area (or not finite) are dropped. Both are counted in ``report``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    flags = {
        name: np.zeros(n, bool) if value is None else np.asarray(value, bool).reshape(-1)
        for name, value in (("difficult", difficult), ("iscrowd", iscrowd), ("group", group))
    }
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    finite = np.isfinite(boxes).all(axis=1)
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    clipped[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    keep = finite & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    report.dropped_boxes += int((~keep).sum())
    report.clipped_boxes += int((keep & (clipped != boxes).any(axis=1)).sum())
    return DetectionSample(
        id=sample_id,
        image_path=image_path,
        width=int(width),
        height=int(height),
        boxes=clipped[keep],
        labels=labels[keep],
        **{name: value[keep] for name, value in flags.items()},
    )
