"""Bjontegaard deltas through the ``bjontegaard`` package.

BD-rate: average bit-rate difference (%) at equal quality (negative = fewer bits than the
anchor), the rate axis in log10. BD-quality (BD-PSNR, BD-mAP): average quality difference at
equal rate. Points are sorted first; a curve the interpolation cannot take (fewer than two
points, or quality not strictly increasing with rate for BD-rate) gives NaN rather than an
error, so one noisy curve does not stop a table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import bjontegaard
import numpy as np

# Piecewise cubic Hermite (shape-preserving, the JVET CTC-style choice): on few, unevenly
# spaced points Akima and the cubic fit can overshoot and flip the sign of a BD-rate.
DEFAULT_METHOD = "pchip"
METHODS = ("akima", "pchip", "cubic")


def _sorted_curve(rate: Sequence[float], quality: Sequence[float], by: str) -> tuple[np.ndarray, np.ndarray] | None:
    rate = np.asarray(rate, dtype=np.float64)
    quality = np.asarray(quality, dtype=np.float64)
    ok = np.isfinite(rate) & np.isfinite(quality) & (rate > 0)
    rate, quality = rate[ok], quality[ok]
    if len(rate) < 2:
        return None
    key = quality if by == "quality" else rate
    order = np.argsort(key, kind="stable")
    rate, quality = rate[order], quality[order]
    if np.any(np.diff(key[order]) <= 0):
        return None
    if by == "quality" and np.any(np.diff(rate) <= 0):
        return None  # quality must rise with rate for the rate-at-quality inversion
    return rate, quality


def bd_rate(rate_anchor: Sequence[float], quality_anchor: Sequence[float],
            rate_test: Sequence[float], quality_test: Sequence[float],
            method: str = DEFAULT_METHOD) -> float:
    """BD-rate in percent of the test curve against the anchor (NaN when undefined)."""
    anchor = _sorted_curve(rate_anchor, quality_anchor, by="quality")
    test = _sorted_curve(rate_test, quality_test, by="quality")
    if anchor is None or test is None:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(bjontegaard.bd_rate(anchor[0], anchor[1], test[0], test[1], method=method,
                                         require_matching_points=False, min_overlap=0))


def bd_quality(rate_anchor: Sequence[float], quality_anchor: Sequence[float],
               rate_test: Sequence[float], quality_test: Sequence[float],
               method: str = DEFAULT_METHOD) -> float:
    """BD-quality (BD-PSNR in dB, BD-mAP in mAP units) of the test curve (NaN when undefined)."""
    anchor = _sorted_curve(rate_anchor, quality_anchor, by="rate")
    test = _sorted_curve(rate_test, quality_test, by="rate")
    if anchor is None or test is None:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(bjontegaard.bd_psnr(anchor[0], anchor[1], test[0], test[1], method=method,
                                         require_matching_points=False, min_overlap=0))
