"""Tests for icm.compression.losses: the pseudo-ground-truth rate-distortion loss."""

import math

import pytest
import torch
from compressai.losses import RateDistortionLoss

from icm.compression.losses import PseudoTargetLoss, blend_target


def fake_output(x_hat: torch.Tensor) -> dict:
    return {"x_hat": x_hat, "likelihoods": {"y": torch.full((2, 4, 4, 4), 0.25), "z": torch.full((2, 2, 1, 1), 0.5)}}


def test_blend_target_endpoints_are_exact_and_middle_is_linear():
    x, x_aug = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert blend_target(x, x_aug, 0.0) is x
    assert torch.equal(blend_target(x, x_aug, 1.0), x_aug)
    assert torch.allclose(blend_target(x, x_aug, 0.25), 0.75 * x + 0.25 * x_aug, atol=1e-7)


def test_loss_is_lambda_255sq_mse_to_target_plus_bpp():
    x, x_aug, x_hat = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    out = PseudoTargetLoss(lmbda=0.0067, beta=1.0)(fake_output(x_hat), x, x_aug)
    bpp = (2 * 4 * 16 * 2 + 2 * 2 * 1) / (2 * 16 * 16)  # -log2 of the likelihoods per pixel
    mse = torch.mean((x_hat - x_aug) ** 2)
    assert out["bpp_loss"].item() == pytest.approx(bpp, rel=1e-6)
    assert out["mse_loss"].item() == pytest.approx(mse.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.0067 * 255**2 * mse.item() + bpp, rel=1e-6)


def test_beta_zero_is_compressai_rate_distortion_loss_on_the_original():
    x, x_aug, x_hat = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    ours = PseudoTargetLoss(lmbda=0.013, beta=0.0)(fake_output(x_hat), x, x_aug)
    reference = RateDistortionLoss(lmbda=0.013)(fake_output(x_hat), x)
    assert ours["loss"].item() == reference["loss"].item()


def test_ms_ssim_variant_uses_one_minus_ms_ssim_and_still_reports_mse():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 176, 176)
    x_aug = (x + 0.05).clamp(0, 1)
    x_hat = (x_aug + 0.02 * torch.randn_like(x)).clamp(0, 1)
    out = PseudoTargetLoss(lmbda=8.73, metric="ms-ssim", beta=1.0)(fake_output(x_hat), x, x_aug)
    from pytorch_msssim import ms_ssim

    expected = 8.73 * (1 - ms_ssim(x_hat, x_aug, data_range=1.0)) + out["bpp_loss"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["mse_loss"].item() == pytest.approx(torch.mean((x_hat - x_aug) ** 2).item(), rel=1e-5)
    assert math.isfinite(out["loss"].item())


def test_negative_or_infinite_beta_is_rejected():
    for beta in (-0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="beta"):
            PseudoTargetLoss(lmbda=0.01, beta=beta)


def test_beta_above_one_extrapolates_past_the_augmented_image_within_0_1():
    x = torch.tensor([0.50, 0.50, 0.98, 0.02]).view(1, 1, 2, 2)
    x_aug = torch.tensor([0.52, 0.47, 1.00, 0.00]).view(1, 1, 2, 2)
    target = blend_target(x, x_aug, 2.0)
    expected = torch.tensor([0.54, 0.44, 1.00, 0.00]).view(1, 1, 2, 2)  # x + 2 * delta, clipped
    assert torch.allclose(target, expected, atol=1e-6)
    assert torch.allclose(blend_target(x, x_aug, 0.5), (x + x_aug) / 2, atol=1e-6)
