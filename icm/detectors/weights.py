"""Detector weights: our own checkpoints, and the error for default weights that cannot be fetched.

``weights=`` of :func:`icm.detectors.build_detector` is one of

- ``"default"``: the library's own download (ultralytics assets, torchvision ``Weights``
  enums). Offline and not cached, this raises :class:`WeightsUnavailableError`, one line
  naming the file to fetch and the ``--weights NAME=PATH`` flag;
- ``None``: random initialisation (tests, training from scratch);
- a path: a zoo file of the family (ultralytics ``.pt`` through ultralytics' own loader,
  torchvision ``.pth`` state dict through ``torch.load(weights_only=True)``) or one of OUR
  checkpoints, written by :func:`save_detector_checkpoint`::

      {"format": "icm-detector", "version": 1, "name": registry name, "family": ...,
       "classes": dataset classes, "native_classes": classes of the network's head,
       "build_kwargs": {...}, "state_dict": {...} (fp16 by default), "card": {...}}

  Everything in it is plain data, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from icm.io import atomic_torch_save, check_tensors_sha256, tensors_sha256

CHECKPOINT_FORMAT = "icm-detector"
CHECKPOINT_VERSION = 1
_REQUIRED_KEYS = ("name", "classes", "native_classes", "build_kwargs", "state_dict")


class WeightsUnavailableError(FileNotFoundError):
    """Weights that are neither on disk nor downloadable (offline); the message is one line."""


def weights_unavailable(name: str, filename: str, url: str | None, cause: BaseException | str) -> WeightsUnavailableError:
    """The one-line error for default weights that could not be fetched."""
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    where = f" from {url}" if url else ""
    return WeightsUnavailableError(
        f"{name}: default weights {filename} are not available ({reason}); download them{where} "
        f"and pass --weights {name}=PATH (weights='PATH' in Python)"
    )


def is_weights_path(weights: Any) -> bool:
    """True when ``weights`` names a file rather than ``"default"`` or ``None``."""
    return isinstance(weights, (str, os.PathLike)) and str(weights) != "default"


def read_detector_checkpoint(path: str | os.PathLike) -> dict | None:
    """Our checkpoint at ``path`` (loaded with ``weights_only=True``), or None when the file is
    some other weights file (a zoo state dict or an ultralytics pickle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError):
        return None  # not loadable as plain data: a pickled model of another library
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        return None
    missing = [k for k in _REQUIRED_KEYS if k not in obj]
    if missing:
        raise ValueError(f"{path}: detector checkpoint lacks {', '.join(missing)}")
    check_tensors_sha256(obj, path)
    return obj


def save_detector_checkpoint(
    path: str | os.PathLike, detector: torch.nn.Module, card: dict | None = None, half: bool = True,
    extra: dict | None = None,
) -> None:
    """Write ``detector`` (a built :class:`~icm.detectors.base.Detector`) as our checkpoint,
    atomically. ``card`` is free-form plain data (training data, steps, mAP ...); ``half``
    stores floating tensors in fp16 (they load back into fp32 parameters); ``extra``: more
    top-level entries (a trainer's resume state), which readers of the weights ignore."""
    state = {
        k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu()
        for k, v in detector.state_dict().items()
    }
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "name": detector.name,
        "family": detector.family,
        "classes": list(detector.classes),
        "native_classes": list(detector.native_classes),
        "build_kwargs": dict(detector.build_kwargs),
        "state_dict": state,
        "state_sha256": tensors_sha256(state),
        "card": dict(card or {}),
    }
    clash = set(extra or {}) & set(checkpoint)
    if clash:
        raise ValueError(f"extra entries {sorted(clash)} would replace the checkpoint's own")
    atomic_torch_save(path, {**checkpoint, **(extra or {})})
