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


# ----------------------------------------------------------------------------- many curves at once


def bd_rate_batch(rate_anchor: np.ndarray, quality_anchor: np.ndarray, rate_test: np.ndarray,
                  quality_test: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
    """:func:`bd_rate` of B curve pairs at once (rows of [B, points] arrays), e.g. bootstrap
    resamples; NaN where undefined. The same numbers as the ``bjontegaard`` package (to
    rounding) without its per-call cost: pchip and akima are computed here, vectorised over
    the rows; ``cubic`` and rows with missing points go through :func:`bd_rate`."""
    return _bd_batch(rate_anchor, quality_anchor, rate_test, quality_test, method, by="quality")


def bd_quality_batch(rate_anchor: np.ndarray, quality_anchor: np.ndarray, rate_test: np.ndarray,
                     quality_test: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
    """:func:`bd_quality` of B curve pairs at once (see :func:`bd_rate_batch`)."""
    return _bd_batch(rate_anchor, quality_anchor, rate_test, quality_test, method, by="rate")


def _bd_batch(rate_anchor, quality_anchor, rate_test, quality_test, method: str, by: str) -> np.ndarray:
    if method not in METHODS:
        raise ValueError(f"BD interpolation {method!r}: expected one of {', '.join(METHODS)}")
    ra, qa, rt, qt = (np.atleast_2d(np.asarray(v, dtype=np.float64)) for v in
                      (rate_anchor, quality_anchor, rate_test, quality_test))
    rows = max(len(ra), len(qa), len(rt), len(qt))
    ra, qa = np.broadcast_to(ra, (rows, ra.shape[1])), np.broadcast_to(qa, (rows, qa.shape[1]))
    rt, qt = np.broadcast_to(rt, (rows, rt.shape[1])), np.broadcast_to(qt, (rows, qt.shape[1]))
    out = np.full(rows, math.nan)
    fast = (np.isfinite(ra).all(1) & np.isfinite(qa).all(1) & (ra > 0).all(1)
            & np.isfinite(rt).all(1) & np.isfinite(qt).all(1) & (rt > 0).all(1))
    if method == "cubic" or ra.shape[1] < 2 or rt.shape[1] < 2:
        fast[:] = False
    scalar = bd_rate if by == "quality" else bd_quality
    for b in np.nonzero(~fast)[0]:
        out[b] = scalar(ra[b], qa[b], rt[b], qt[b], method)
    if fast.any():
        xa, ya, ok_a = _batch_curve(ra[fast], qa[fast], by)
        xt, yt, ok_t = _batch_curve(rt[fast], qt[fast], by)
        lo, hi = np.maximum(xa[:, 0], xt[:, 0]), np.minimum(xa[:, -1], xt[:, -1])
        ok = ok_a & ok_t & (hi > lo)  # bjontegaard: no overlap, no BD
        with np.errstate(all="ignore"):
            avg = (_hermite_integral(xt, yt, lo, hi, method)
                   - _hermite_integral(xa, ya, lo, hi, method)) / (hi - lo)
            value = (10**avg - 1) * 100 if by == "quality" else avg
        out[fast] = np.where(ok, value, math.nan)
    return out


def _batch_curve(rate: np.ndarray, quality: np.ndarray, by: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted as :func:`_sorted_curve` sorts them: (x, y, valid) with x the quality
    and y log10(rate) for BD-rate (``by="quality"``), x log10(rate) and y the quality for
    BD-quality."""
    order = np.argsort(quality if by == "quality" else rate, axis=1, kind="stable")
    rate = np.take_along_axis(rate, order, 1)
    quality = np.take_along_axis(quality, order, 1)
    valid = (np.diff(rate, axis=1) > 0).all(1)
    if by == "quality":
        valid &= (np.diff(quality, axis=1) > 0).all(1)
        return quality, np.log10(rate), valid
    return np.log10(rate), quality, valid


def _hermite_integral(x: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray, method: str) -> np.ndarray:
    """Integral over [lo, hi] of each row's scipy PCHIP / Akima interpolant (a cubic Hermite
    spline; two points: the straight line) through increasing ``x``."""
    h = np.diff(x, axis=1)
    m = np.diff(y, axis=1) / h
    if x.shape[1] == 2:
        d = np.concatenate([m, m], axis=1)
    elif method == "pchip":
        d = _pchip_derivatives(h, m)
    else:
        d = _akima_derivatives(m)
    # per interval: y_k + d_k t + c2 t^2 + c3 t^3 for t in [0, h], integrated from a to b
    c2 = (3 * m - 2 * d[:, :-1] - d[:, 1:]) / h
    c3 = (d[:, :-1] + d[:, 1:] - 2 * m) / h**2
    a = np.clip(lo[:, None], x[:, :-1], x[:, 1:]) - x[:, :-1]
    b = np.clip(hi[:, None], x[:, :-1], x[:, 1:]) - x[:, :-1]

    def antiderivative(t):
        return y[:, :-1] * t + d[:, :-1] * t**2 / 2 + c2 * t**3 / 3 + c3 * t**4 / 4

    return (antiderivative(b) - antiderivative(a)).sum(1)


def _pchip_derivatives(h: np.ndarray, m: np.ndarray) -> np.ndarray:
    """scipy's ``PchipInterpolator`` node derivatives, row-wise (three or more points)."""
    rows, n = m.shape[0], m.shape[1] + 1
    d = np.zeros((rows, n))
    w1, w2 = 2 * h[:, 1:] + h[:, :-1], h[:, 1:] + 2 * h[:, :-1]
    flat = (np.sign(m[:, 1:]) != np.sign(m[:, :-1])) | (m[:, 1:] == 0) | (m[:, :-1] == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 / m[:, :-1] + w2 / m[:, 1:]) / (w1 + w2)
        d[:, 1:-1] = np.where(flat, 0.0, 1.0 / harmonic)

    def edge(h0, h1, m0, m1):
        e = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        wrong_sign = np.sign(e) != np.sign(m0)
        overshoot = (np.sign(m0) != np.sign(m1)) & (np.abs(e) > 3 * np.abs(m0))
        return np.where(wrong_sign, 0.0, np.where(overshoot, 3 * m0, e))

    d[:, 0] = edge(h[:, 0], h[:, 1], m[:, 0], m[:, 1])
    d[:, -1] = edge(h[:, -1], h[:, -2], m[:, -1], m[:, -2])
    return d


def _akima_derivatives(m: np.ndarray) -> np.ndarray:
    """scipy's ``Akima1DInterpolator`` (method "akima") node derivatives, row-wise (three
    or more points)."""
    rows, n = m.shape[0], m.shape[1] + 1
    s = np.empty((rows, n + 3))
    s[:, 2:-2] = m
    s[:, 1] = 2 * s[:, 2] - s[:, 3]
    s[:, 0] = 2 * s[:, 1] - s[:, 2]
    s[:, -2] = 2 * s[:, -3] - s[:, -4]
    s[:, -1] = 2 * s[:, -2] - s[:, -3]
    d = 0.5 * (s[:, 3:] + s[:, :-3])  # where the slope is undefined
    dm = np.abs(np.diff(s, axis=1))
    f1, f2 = dm[:, 2:], dm[:, :-2]
    f12 = f1 + f2
    defined = f12 > 1e-9 * f12.max(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        weighted = s[:, 1:-2] + (f2 / f12) * (s[:, 2:-1] - s[:, 1:-2])
    return np.where(defined, weighted, d)
