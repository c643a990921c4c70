"""PSNR and MS-SSIM helpers, and the per-image meter."""

import math

import pytest
import torch

from icm.evaluation.metrics import PSNR_CAP_DB, FidelityMeter, ms_ssim_8bit, psnr, to_8bit


def test_psnr_of_one_level_everywhere_and_identical_images():
    x = torch.full((3, 16, 16), 100 / 255)
    y = torch.full((3, 16, 16), 101 / 255)
    assert psnr(x, y) == pytest.approx(20 * math.log10(255))  # MSE = 1 level^2
    assert psnr(x, x) == PSNR_CAP_DB
    # half the pixels off by 2 levels: MSE 2
    z = x.clone()
    z[:, :8] = 102 / 255
    assert psnr(x, z) == pytest.approx(20 * math.log10(255) - 10 * math.log10(2))


def test_psnr_rounds_to_8_bit_first():
    x = torch.full((3, 8, 8), 100 / 255)
    assert psnr(x, x + 0.2 / 255) == PSNR_CAP_DB  # below half a level: same 8-bit image
    assert to_8bit(torch.tensor([1.5, -0.1, 0.5])).tolist() == [255.0, 0.0, 128.0]


def test_ms_ssim_needs_more_than_160_pixels():
    small = torch.rand(1, 3, 160, 300)
    assert ms_ssim_8bit(small, small) is None
    big = torch.rand(1, 3, 161, 170)
    assert ms_ssim_8bit(big, big) == pytest.approx(1.0)
    assert ms_ssim_8bit(big, (big + 0.1 * torch.randn_like(big)).clamp(0, 1)) < 0.99


def test_meter_means_and_explicit_ms_ssim_note():
    m = FidelityMeter()
    m.update(1.0, 30.0, None, 0.1, 0.2)
    m.update(3.0, 40.0, 0.9, 0.3, 0.4)
    s = m.summary()
    assert s["bpp"] == 2.0 and s["psnr-rgb"] == 35.0 and s["ms-ssim-rgb"] == pytest.approx(0.9)
    assert s["encoding_time"] == pytest.approx(0.2) and s["decoding_time"] == pytest.approx(0.3)
    assert "1 of 2 images too small" in s["ms-ssim-rgb_note"]
    only_small = FidelityMeter()
    only_small.update(1.0, 30.0, None, 0.0, 0.0)
    assert only_small.summary()["ms-ssim-rgb"] is None
