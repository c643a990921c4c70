"""The one record type for a detection sample, and a dataset as a list of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _empty(dtype, *shape) -> np.ndarray:
    return np.zeros((0, *shape), dtype=dtype)


@dataclass
class DetectionSample:
    """One image and its boxes.

    ``boxes`` are float32 ``[N, 4]`` xyxy in 0-based pixel coordinates of the image as
    stored on disk (after EXIF orientation); ``labels`` are int64 indices into the
    dataset's ``classes``. The flags are per box: ``difficult`` (VOC), ``iscrowd`` (COCO),
    ``group`` (Open Images IsGroupOf). A sample without objects has N = 0. ``verified``
    (Open Images): the class indices that image-level labels verify in this image, present
    or absent; the Open Images metric evaluates only those and the boxed classes.
    """

    id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: _empty(np.float32, 4))
    labels: np.ndarray = field(default_factory=lambda: _empty(np.int64))
    difficult: np.ndarray = field(default_factory=lambda: _empty(bool))
    iscrowd: np.ndarray = field(default_factory=lambda: _empty(bool))
    group: np.ndarray = field(default_factory=lambda: _empty(bool))
    verified: np.ndarray = field(default_factory=lambda: _empty(np.int64))

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        self.verified = np.asarray(self.verified, dtype=np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        for name in ("difficult", "iscrowd", "group"):
            value = np.asarray(getattr(self, name), dtype=bool).reshape(-1)
            if len(value) == 0 and n:
                value = np.zeros(n, dtype=bool)
            setattr(self, name, value)
        lengths = {len(self.labels), len(self.difficult), len(self.iscrowd), len(self.group)}
        if lengths != {n}:
            raise ValueError(f"sample {self.id}: boxes, labels and flags differ in length")

    @property
    def num_objects(self) -> int:
        return len(self.boxes)


@dataclass
class DetectionDataset:
    """A named list of samples with the class names their labels index.

    ``class_ids`` (optional) gives each class's identifier in the source annotations, for
    writing results in that space: the COCO category id, the Open Images label MID.
    ``mask_file`` (optional): a COCO instances file holding the samples' instance masks.
    """

    name: str
    classes: list[str]
    samples: list[DetectionSample]
    class_ids: list[int | str] | None = None
    mask_file: Path | None = None  # COCO instances file with the samples' masks (by file_name), if any

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> DetectionSample:
        return self.samples[i]
