"""Rate-distortion loss against the pseudo ground truth.

The codec encodes the ORIGINAL image ``x``; its reconstruction is scored against the
target ``(1 - beta) * x + beta * x_aug`` where ``x_aug`` is stage one's augmented image.
``beta = 1`` (default) is MAA-ICM, ``beta = 0`` the control: plain fine-tuning on ``x``.
The rate-distortion trade-off itself is CompressAI's ``RateDistortionLoss``:
``lambda * 255^2 * MSE + bpp`` or ``lambda * (1 - MS-SSIM) + bpp``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from compressai.losses import RateDistortionLoss
from torch import nn


def blend_target(x: torch.Tensor, x_aug: torch.Tensor, beta: float) -> torch.Tensor:
    """``(1 - beta) * x + beta * x_aug`` (exactly ``x`` at 0 and ``x_aug`` at 1). Above 1 it
    extrapolates past ``x_aug`` (``x + beta * delta``), clipped to the image range [0, 1]."""
    if beta == 0:
        return x
    target = torch.lerp(x, x_aug, beta)
    return target.clamp(0.0, 1.0) if beta > 1 else target


class PseudoTargetLoss(nn.Module):
    """Rate-distortion loss of a CompressAI forward pass against the blended target.

    Returns CompressAI's dict (``loss``, ``bpp_loss``, ``mse_loss`` or ``ms_ssim_loss``)
    plus ``mse_loss`` (to the target) for the MS-SSIM variant too, for logging.
    """

    def __init__(self, lmbda: float, metric: str = "mse", beta: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(beta) and beta >= 0.0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        self.beta = beta
        self.rate_distortion = RateDistortionLoss(lmbda=lmbda, metric=metric)

    def forward(
        self, output: dict, x: torch.Tensor, x_aug: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        target = blend_target(x, x_aug, self.beta)
        out = self.rate_distortion(output, target)
        if "mse_loss" not in out:
            out["mse_loss"] = F.mse_loss(output["x_hat"].detach(), target)
        return out
