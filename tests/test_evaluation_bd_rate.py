"""BD-rate and BD-quality through the bjontegaard package."""

import math

import numpy as np
import pytest

from icm.evaluation.bd_rate import METHODS, bd_quality, bd_quality_batch, bd_rate, bd_rate_batch

RATE = [0.1, 0.2, 0.4, 0.8]
MAP = [0.30, 0.42, 0.50, 0.55]


@pytest.mark.parametrize("method", METHODS)
def test_identical_curves_give_zero(method):
    assert bd_rate(RATE, MAP, RATE, MAP, method) == pytest.approx(0.0, abs=1e-9)
    assert bd_quality(RATE, MAP, RATE, MAP, method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_halved_rate_at_equal_accuracy_is_minus_50_percent(method):
    half = [r / 2 for r in RATE]
    assert bd_rate(RATE, MAP, half, MAP, method) == pytest.approx(-50.0, abs=1e-3)
    assert bd_rate(half, MAP, RATE, MAP, method) == pytest.approx(100.0, abs=1e-3)
    assert bd_quality(RATE, MAP, half, MAP, method) > 0  # more accuracy at equal rate


def test_order_of_points_does_not_matter_and_bd_psnr_of_a_shift():
    shuffled = [2, 0, 3, 1]
    r = [RATE[i] for i in shuffled]
    q = [MAP[i] + 0.05 for i in shuffled]
    assert bd_quality(RATE, MAP, r, q) == pytest.approx(0.05)


def test_undefined_curves_give_nan():
    assert math.isnan(bd_rate(RATE, MAP, [0.1], [0.3]))  # one point
    assert math.isnan(bd_rate(RATE, MAP, RATE, [0.3, 0.5, 0.4, 0.6]))  # accuracy not monotonic in rate
    assert math.isnan(bd_quality(RATE, MAP, [0.1, 0.1], [0.3, 0.4]))  # duplicate rates


def test_default_interpolation_keeps_the_sign_on_an_uneven_curve():
    # Measured JPEG and WebP points (noisy 64 px images): WebP needs fewer bits at every PSNR
    # of the overlap, so its BD-rate must be negative. Akima overshoots here and says +15%.
    jpeg = ([1.4245, 1.4453, 1.9121, 4.8301], [22.488, 22.937, 23.799, 25.146])
    webp = ([0.1784, 0.2565, 1.0247, 4.1445], [23.779, 23.843, 24.063, 25.771])
    assert bd_rate(*jpeg, *webp) < -30
    assert bd_rate(*jpeg, *webp, method="akima") > 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("points", [(4, 4), (2, 2), (3, 5), (6, 4)])
def test_batch_equals_one_curve_pair_at_a_time(method, points):
    rng = np.random.default_rng(sum(points))
    rows, (p, q) = 60, points
    ra, rt = np.sort(rng.uniform(0.05, 1, (rows, p)), 1), np.sort(rng.uniform(0.05, 1, (rows, q)), 1)
    qa, qt = np.sort(rng.uniform(25, 38, (rows, p)), 1), np.sort(rng.uniform(25, 38, (rows, q)), 1)
    qa[::7, 0] = qa[::7, -1] + 1  # quality not monotonic in rate: no BD-rate
    shuffle = rng.permutation(q)
    rt[::5], qt[::5] = rt[::5][:, shuffle], qt[::5][:, shuffle]  # points in any order
    qt[::11, 1] = qt[::11, 0]  # a tie
    qa[::13, 1] = np.nan  # a missing point: the row goes through bd_rate / bd_quality
    rt[::17] *= 20  # no overlap
    for batch, single in ((bd_rate_batch, bd_rate), (bd_quality_batch, bd_quality)):
        got = batch(ra, qa, rt, qt, method)
        expected = np.array([single(ra[i], qa[i], rt[i], qt[i], method) for i in range(rows)])
        assert np.array_equal(np.isnan(got), np.isnan(expected))
        assert 0 < np.isnan(expected).sum() < rows
        ok = ~np.isnan(expected)
        assert got[ok] == pytest.approx(expected[ok], rel=1e-9, abs=1e-9)
