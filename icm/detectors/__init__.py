"""Detectors behind one interface (:class:`Detector`) and a registry of builders."""

from icm.detectors.base import Detector, as_image_list
from icm.detectors.registry import available, build_detector, register

__all__ = ["Detector", "as_image_list", "available", "build_detector", "register"]
