"""Registry of detector builders: ``build_detector(name, ...)`` and ``available()``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from icm.detectors.base import Detector
from icm.detectors.weights import CHECKPOINT_FORMAT, is_weights_path, read_detector_checkpoint

Builder = Callable[..., Detector]
_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder(classes=None, num_classes=None, weights="default", device="cpu",
    **kwargs) -> Detector`` under ``name``."""

    def decorator(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"detector {name!r} registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorator


def available() -> list[str]:
    """Every registered detector name, sorted."""
    return sorted(_BUILDERS)


def build_detector(name: str, **kwargs) -> Detector:
    """Build a registered detector (frozen, eval mode). See each builder for its options.

    ``weights`` may be one of our checkpoints (:mod:`icm.detectors.weights`) for any family:
    the detector is then built with the stored architecture arguments and classes, and the
    stored parameters are loaded with strict key matching.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown detector {name!r}; available: {', '.join(available())}")
    weights = kwargs.get("weights", "default")
    if is_weights_path(weights) and Path(weights).is_file():  # (a family may accept other names)
        checkpoint = read_detector_checkpoint(weights)
        if checkpoint is not None:
            return _build_from_checkpoint(name, checkpoint, str(weights), kwargs)
    return _BUILDERS[name](**kwargs).freeze()


def build_detector_set(names: Sequence[str], weights: Mapping[str, str | None], classes: list[str] | None = None,
                       device: str = "cpu", flag: str = "--detectors") -> dict[str, Detector]:
    """The detectors ``names`` (in order), each with ``weights[name]`` or its default weights
    (None: random init), in the dataset's ``classes`` (None: each keeps its own). Weights
    given for a detector not in ``names`` get one warning (a config may list the weights of
    every detector while ``flag`` picks a few)."""
    unused = sorted(set(weights) - set(names))
    if unused:
        warnings.warn(f"--weights for {unused} unused: not in {flag} {list(names)}", stacklevel=2)
    return {name: build_detector(name, classes=classes or None, weights=weights.get(name, "default"), device=device)
            for name in names}


def load_detector(
    path: str | os.PathLike, device: str | torch.device = "cpu", classes: list[str] | None = None, **kwargs
):
    """Build the detector stored in our checkpoint at ``path`` (frozen, eval mode).

    ``classes`` re-targets predictions to another dataset's classes (by name); other
    keyword arguments override the stored build arguments (e.g. a score threshold).
    """
    checkpoint = read_detector_checkpoint(path)
    if checkpoint is None:
        raise ValueError(f"{path}: not a detector checkpoint of this project (format {CHECKPOINT_FORMAT!r})")
    return build_detector(checkpoint["name"], weights=path, device=device, classes=classes, **kwargs)


def _build_from_checkpoint(name: str, checkpoint: dict, path: str, kwargs: dict) -> Detector:
    if checkpoint["name"] != name:
        raise ValueError(f"{path}: checkpoint of detector {checkpoint['name']!r}, not {name!r}")
    native = list(checkpoint["native_classes"])
    classes = kwargs.pop("classes", None) or list(checkpoint["classes"])
    num_classes = kwargs.pop("num_classes", None)
    if num_classes is not None and num_classes != len(native):
        raise ValueError(f"{path}: checkpoint has {len(native)} classes, num_classes={num_classes} asked")
    build_kwargs = {**checkpoint["build_kwargs"], **kwargs, "weights": None, "classes": native, "num_classes": len(native)}
    detector = _BUILDERS[name](**build_kwargs)
    try:
        detector.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: parameters do not fit detector {name!r} ({str(e).splitlines()[0]})") from e
    detector.set_classes(classes, native)
    return detector.freeze()
