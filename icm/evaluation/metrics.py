"""Fidelity metrics: PSNR and MS-SSIM on 8-bit images, and the per-image meter of rate,
fidelity and coding time (bpp itself: :func:`icm.codec.bits_per_pixel`).

Fidelity is always measured on 8-bit-rounded images (what a decoder writes to disk)
against the ORIGINAL image, as CompressAI's ``eval_model`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pytorch_msssim import ms_ssim

# PSNR of two identical images is infinite and JSON has no infinity, so every PSNR is capped
# here (the lossless upper bound, codec ``none``, reports exactly this). Lossy codecs stay far
# below it: one 8-bit step on a single pixel of a 1-megapixel image is already ~113 dB.
PSNR_CAP_DB = 100.0

# pytorch_msssim's 5-scale MS-SSIM (11 px window, 4 downsamplings) needs the short side
# to be larger than (11 - 1) * 2**4 = 160 pixels.
MS_SSIM_MIN_SIDE = 160
MS_SSIM_NOTE = (
    f"5-scale MS-SSIM needs images whose short side exceeds {MS_SSIM_MIN_SIDE} px; "
    "smaller images are left out of the MS-SSIM mean (never replaced by another metric)"
)


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """Float image(s) in [0, 1] -> float tensor of 8-bit levels 0..255 (rounded, clamped)."""
    return x.float().clamp(0, 1).mul(255).round()


def psnr(original: torch.Tensor, decoded: torch.Tensor) -> float:
    """PSNR in dB of one image pair ([3, H, W] or [1, 3, H, W], values in [0, 1]) on 8-bit
    levels; identical images give :data:`PSNR_CAP_DB`."""
    mse = (to_8bit(original) - to_8bit(decoded)).pow(2).mean().item()
    if mse == 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 20 * math.log10(255.0) - 10 * math.log10(mse))


def ms_ssim_supported(height: int, width: int) -> bool:
    """Whether an image is large enough for 5-scale MS-SSIM."""
    return min(height, width) > MS_SSIM_MIN_SIDE


def ms_ssim_8bit(original: torch.Tensor, decoded: torch.Tensor) -> float | None:
    """MS-SSIM of one image pair on 8-bit levels, or None when the image is too small."""
    a, b = to_8bit(original), to_8bit(decoded)
    if a.dim() == 3:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if not ms_ssim_supported(a.shape[-2], a.shape[-1]):
        return None
    return ms_ssim(a, b, data_range=255.0).item()


@dataclass
class FidelityMeter:
    """Running per-image means of bpp, PSNR, MS-SSIM and coding times (CompressAI's
    convention: each metric is the mean over images of the per-image value)."""

    count: int = 0
    bpp_sum: float = 0.0
    psnr_sum: float = 0.0
    ms_ssim_sum: float = 0.0
    ms_ssim_count: int = 0
    encoding_time_sum: float = 0.0
    decoding_time_sum: float = 0.0

    def update(self, bpp_value: float, psnr_value: float, ms_ssim_value: float | None,
               encoding_time: float, decoding_time: float) -> None:
        """Add one image's measurements."""
        self.count += 1
        self.bpp_sum += bpp_value
        self.psnr_sum += psnr_value
        if ms_ssim_value is not None:
            self.ms_ssim_sum += ms_ssim_value
            self.ms_ssim_count += 1
        self.encoding_time_sum += encoding_time
        self.decoding_time_sum += decoding_time

    def summary(self) -> dict:
        """Means in CompressAI's key names, plus an explicit note when MS-SSIM is partial or
        unavailable (value None)."""
        n = max(self.count, 1)
        out = {
            "bpp": self.bpp_sum / n,
            "psnr-rgb": self.psnr_sum / n,
            "ms-ssim-rgb": self.ms_ssim_sum / self.ms_ssim_count if self.ms_ssim_count else None,
            "encoding_time": self.encoding_time_sum / n,
            "decoding_time": self.decoding_time_sum / n,
        }
        if self.ms_ssim_count < self.count:
            out["ms-ssim-rgb_note"] = (
                f"{self.count - self.ms_ssim_count} of {self.count} images too small; "
                + MS_SSIM_NOTE
            )
        return out
