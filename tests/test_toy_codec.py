"""benchmarks/toy_codec.py: the codec targets computed from result curves."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from icm.evaluation.make_tables import Curve

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("toy_codec", ROOT / "benchmarks" / "toy_codec.py")
toy_codec = importlib.util.module_from_spec(spec)
sys.modules["toy_codec"] = toy_codec
spec.loader.exec_module(toy_codec)

KEY = "map-voc07:"


def curve(name, bpps, psnrs, maps=None, qualities=None):
    """PSNR linear in log-bpp; ``maps``: {detector: [per point]} (group mean added)."""
    results = {"bpp": list(bpps), "psnr-rgb": list(psnrs)}
    for det, values in (maps or {}).items():
        results[KEY + det] = list(values)
    if maps:
        results[KEY + "all-mean"] = [sum(v[i] for v in maps.values()) / len(maps) for i in range(len(bpps))]
    return Curve(name, "checkpoint", qualities or list(range(1, len(bpps) + 1)), results)


def log_line(bpps, at_one_bpp, slope):
    return [at_one_bpp + slope * math.log(b) for b in bpps]


def world(anchor_offset=0.0, control_offset=None):
    rates = [0.15, 0.25, 0.4, 0.6, 0.9, 1.3]
    anchor = curve("anchor", rates, log_line(rates, 31 + anchor_offset, 3.0),
                   {"a": [0.3, 0.4, 0.5, 0.6, 0.65, 0.7], "b": [0.1, 0.2, 0.3, 0.4, 0.45, 0.5]})
    clean = curve("none", [24.0], [100.0], {"a": [0.8], "b": [0.8]})
    webp_rates = [0.2, 0.3, 0.45, 0.7, 1.0]
    webp = curve("webp", webp_rates, log_line(webp_rates, 31, 3.0), qualities=[10, 20, 30, 50, 70])
    curves = {"none": clean, "webp": webp, "anchor": anchor}
    if control_offset is not None:
        c = curve("control500", rates, log_line(rates, 31 + anchor_offset + control_offset, 3.0),
                  {"a": [0.3, 0.4, 0.5, 0.6, 0.65, 0.7], "b": [0.1, 0.2, 0.3, 0.4, 0.45, 0.5]})
        curves["control500"] = c
    return curves


def test_psnr_margin_is_the_offset_of_parallel_lines_over_the_covered_range():
    curves = world(anchor_offset=0.4)
    margin = toy_codec.psnr_margin(curves["anchor"], curves["webp"], 0.3, 0.6)
    assert margin["covered"] == [0.3, 0.6]
    assert margin["min_margin_db"] == pytest.approx(0.4, abs=1e-9)
    short = curve("short", [0.1, 0.35], [28.0, 29.0])
    assert toy_codec.psnr_margin(short, curves["webp"], 0.3, 0.6)["covered"] == [0.3, 0.35]


def test_targets_pass_and_fail_where_the_curves_say():
    report = toy_codec.codec_targets(world(anchor_offset=0.4), None)
    span = 3.0 * math.log(1.3 / 0.15)  # 6.48 dB
    assert report["psnr_span"]["value_db"] == pytest.approx(span) and report["psnr_span"]["pass"]
    top = report["top_quality"]
    assert top["quality"] == 6 and top["kept"] == pytest.approx({"a": 0.7 / 0.8, "b": 0.5 / 0.8})
    assert top["pass"]  # 62.5% >= 60%
    low = report["lowest_quality"]
    assert low["quality"] == 1 and low["kept_mean"] == pytest.approx(0.2 / 0.8) and low["pass"]
    assert report["vs_webp"]["pass"]
    assert not toy_codec.codec_targets(world(anchor_offset=-0.1), None)["vs_webp"]["pass"]
    narrow = world()
    narrow["anchor"] = curve("anchor", [0.2, 0.4], [30.0, 33.0])  # ends below 0.6 bpp; span 3 dB
    report = toy_codec.codec_targets(narrow, None)
    assert not report["vs_webp"]["pass"] and not report["psnr_span"]["pass"]
    assert "top_quality" not in report  # no detector results
    # The span beside WebP's on the rates both cover: anchor 0.2-0.4 bpp, WebP from 0.2.
    same = report["psnr_span"]["same_bpp"]
    assert same["covered"] == [0.2, 0.4] and same["anchor_db"] == pytest.approx(3.0)
    assert same["other_db"] == pytest.approx(3.0 * math.log(0.4 / 0.2))
    assert "WebP 2.08 dB" in toy_codec.format_report(narrow, report)


def test_convergence_is_judged_on_bd_psnr_and_the_mean_map_bd_rate():
    small = toy_codec.codec_targets(world(control_offset=0.1), "control500", resamples=0)["converged"]
    assert small["bd"]["psnr-rgb"]["bd_quality"][0] == pytest.approx(0.1, abs=1e-6)
    assert small["bd"]["map-voc07:all-mean"]["bd_rate_percent"][0] == pytest.approx(0.0, abs=1e-6)
    assert small["pass"]
    big = toy_codec.codec_targets(world(control_offset=0.3), "control500", resamples=0)["converged"]
    assert not big["pass"]
    text = toy_codec.format_report(world(control_offset=0.3), toy_codec.codec_targets(
        world(control_offset=0.3), "control500", resamples=0))
    assert "| FAIL |" in text and "BD-PSNR 0.300 dB" in text
