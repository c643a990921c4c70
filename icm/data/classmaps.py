"""Class names of VOC and COCO, and maps between class spaces by name.

COCO-trained detectors predict in one of two COCO layouts: 80 contiguous indices in the
order of :data:`COCO_CLASSES` (ultralytics, CenterNet) or the original category ids 1..90
(torchvision), given per contiguous index by :data:`COCO_91_IDS`. :func:`class_map`
translates such a class space into a dataset's classes by name, so a COCO detector
predicts VOC classes on VOC and Open Images classes on OID; a COCO class with no dataset
class maps to -1 and its detections are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip

COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
]  # fmt: skip

# COCO category id (1..90, with gaps) of each contiguous COCO class: the torchvision layout.
COCO_91_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]  # fmt: skip

# VOC names that differ from COCO's; every other VOC class has the same name in COCO.
VOC_TO_COCO_ALIASES = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}

# Open Images display names (lower case) that name a COCO class differently. Only renames
# of the same concept: hyponyms such as Man/Woman -> person are left out on purpose.
OID_TO_COCO_ALIASES = {
    "ball": "sports ball",
    "cattle": "cow",
    "coffee cup": "cup",
    "computer keyboard": "keyboard",
    "computer mouse": "mouse",
    "doughnut": "donut",
    "flying disc": "frisbee",
    "hair dryer": "hair drier",
    "houseplant": "potted plant",
    "kitchen & dining room table": "dining table",
    "kitchen knife": "knife",
    "microwave oven": "microwave",
    "mobile phone": "cell phone",
    "remote control": "remote",
    "ski": "skis",
    "television": "tv",
}

# The aliases :func:`class_map` uses by default: any VOC or OID name -> its COCO name.
COCO_ALIASES = {**VOC_TO_COCO_ALIASES, **OID_TO_COCO_ALIASES}


def canonical_name(name: str, aliases: Mapping[str, str] = COCO_ALIASES) -> str:
    """Lower-case ``name`` and replace it by its alias, if it has one."""
    key = name.strip().lower()
    return aliases.get(key, key).lower()


def class_map(
    source_classes: Sequence[str],
    target_classes: Sequence[str],
    aliases: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Index map from one class space to another, matched by name.

    Returns int64 ``[len(source_classes)]``: entry ``i`` is the index of the target class
    whose name equals source class ``i``, or -1 when there is none. Names are compared
    case-insensitively after ``aliases`` (lower-case name -> name, applied to both sides;
    default :data:`COCO_ALIASES`) so ``class_map(COCO_CLASSES, VOC_CLASSES)`` maps
    ``airplane`` to ``aeroplane``. Two target classes with one canonical name are an error.
    """
    aliases = COCO_ALIASES if aliases is None else {k.lower(): v for k, v in aliases.items()}
    target_index: dict[str, int] = {}
    for j, name in enumerate(target_classes):
        key = canonical_name(name, aliases)
        if key in target_index:
            first = target_classes[target_index[key]]
            raise ValueError(f"target classes {first!r} and {name!r} both map to {key!r}")
        target_index[key] = j
    return np.array(
        [target_index.get(canonical_name(name, aliases), -1) for name in source_classes],
        dtype=np.int64,
    )
