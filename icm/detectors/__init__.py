"""Detectors behind one interface (:class:`Detector`) and a registry of builders.

Importing this package registers every family: ultralytics (YOLOv3u/v5u/v8/11, RT-DETR),
torchvision (Faster/Mask R-CNN, RetinaNet, FCOS, SSD, SSDlite) and CenterNet, plus small
``toy_*`` variants that train on CPU. The libraries themselves are imported only when a
detector of their family is built.
"""

from icm.detectors.base import Detector, LabelMap, as_image_list
from icm.detectors.registry import (
    available,
    build_detector,
    build_detector_set,
    load_detector,
    register,
)
from icm.detectors.weights import (
    WeightsUnavailableError,
    read_detector_checkpoint,
    save_detector_checkpoint,
)

# isort: split
# Last, so that a family module may import anything above from this package.
from icm.detectors import centernet, torchvision_family, ultralytics_family  # noqa: F401  (registers)

__all__ = [
    "Detector",
    "LabelMap",
    "WeightsUnavailableError",
    "as_image_list",
    "available",
    "build_detector",
    "build_detector_set",
    "load_detector",
    "read_detector_checkpoint",
    "register",
    "save_detector_checkpoint",
]
