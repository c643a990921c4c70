"""Registry of detector builders: ``build_detector(name, ...)`` and ``available()``."""

from __future__ import annotations

from collections.abc import Callable

from icm.detectors.base import Detector

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
    """Build a registered detector (frozen, eval mode). See each builder for its options."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown detector {name!r}; available: {', '.join(available())}")
    return _BUILDERS[name](**kwargs).freeze()
