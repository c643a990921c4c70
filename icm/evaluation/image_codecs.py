"""The codecs evaluation compares, behind one small interface.

* :class:`LearnedCodec` - a CompressAI model (a stage-two checkpoint, or a zoo model at a
  quality: the anchor). Real bitstreams through :mod:`icm.codec` (pad to 64, compress,
  decompress, crop), or with ``estimate=True`` the entropy model's likelihood estimate.
* :class:`PillowCodec` - JPEG or WebP through Pillow at a quality 0..100 (anchors).
* :class:`IdentityCodec` - ``none``: no compression, raw 8-bit RGB (24 bpp): the upper
  bound for accuracy and fidelity.

``encode`` takes one image ``[1, 3, H, W]`` in [0, 1] and returns ``(payload, num_bytes)``;
``decode`` returns the image ``[1, 3, H, W]`` in [0, 1] at the original size.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from icm.codec import (
    compress_image,
    crop,
    decompress_image,
    estimated_bpp,
    load_codec,
    pad_to_multiple,
    resolve_backbone,
)
from icm.io import file_sha256, image_to_tensor, tensor_to_image


class IdentityCodec:
    """No compression: the payload is the raw 8-bit RGB image (3 bytes per pixel)."""

    kind = "none"
    rate_type = "raw"

    def __init__(self) -> None:
        self.name = "none"
        self.quality: int | None = None
        self.description = "uncompressed 8-bit RGB (upper bound)"

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        return x, float(3 * x.shape[-2] * x.shape[-1])

    def decode(self, payload: torch.Tensor) -> torch.Tensor:
        return payload


class PillowCodec:
    """JPEG or WebP through Pillow (JPEG with Pillow's default 4:2:0 chroma subsampling)."""

    kind = "pillow"
    rate_type = "real"
    FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}

    def __init__(self, name: str, quality: int) -> None:
        if name not in self.FORMATS:
            raise ValueError(f"unknown Pillow codec {name!r} (choose from {', '.join(self.FORMATS)})")
        if not 0 <= int(quality) <= 100:
            raise ValueError(f"{name} quality {quality} out of range 0..100")
        self.name = name
        self.quality = int(quality)
        self.format = self.FORMATS[name]
        self.description = f"{self.format} through Pillow, quality {self.quality}"

    def encode(self, x: torch.Tensor) -> tuple[bytes, float]:
        buf = io.BytesIO()
        tensor_to_image(x[0]).save(buf, format=self.format, quality=self.quality)
        data = buf.getvalue()
        return data, float(len(data))

    def decode(self, payload: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(payload)) as img:
            return image_to_tensor(img.convert("RGB")).unsqueeze(0)


class LearnedCodec:
    """A CompressAI model (``kind`` ``zoo`` or ``checkpoint``); ``estimate=True`` replaces the
    real bitstream by the likelihood estimate of the rate (labelled ``estimated`` everywhere
    it is reported)."""

    def __init__(self, model: torch.nn.Module, name: str, quality: int | None,
                 description: str = "", estimate: bool = False, kind: str = "checkpoint",
                 source: str | None = None) -> None:
        self.model = model.eval()
        self.kind = kind
        self.source = source  # the checkpoint file's name, which tells points of one curve apart
        self.name = name
        self.quality = quality
        self.estimate = estimate
        self.rate_type = "estimated" if estimate else "real"
        self.description = description or name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, x: torch.Tensor) -> tuple[Any, float]:
        x = x.to(self.device)
        if self.estimate:
            with torch.no_grad():
                x_padded, pad = pad_to_multiple(x)
                out = self.model(x_padded)
            bits = estimated_bpp(out["likelihoods"], 1).item()
            return crop(out["x_hat"], pad).clamp(0, 1), bits / 8.0
        compressed = compress_image(self.model, x)
        return compressed, float(compressed.num_bytes)

    def decode(self, payload: Any) -> torch.Tensor:
        if self.estimate:
            return payload
        return decompress_image(self.model, payload)


def learned_from_zoo(backbone: str, quality: int, metric: str = "mse", device: str | torch.device = "cpu",
                     estimate: bool = False) -> LearnedCodec:
    """The unmodified pretrained zoo codec at ``quality`` (needs the zoo weights)."""
    model, _ = load_codec(None, backbone=backbone, quality=quality, metric=metric, device=device)
    name = f"{resolve_backbone(backbone)}-{metric}"
    return LearnedCodec(model, name, int(quality), f"CompressAI zoo {name}, quality {quality}", estimate, kind="zoo")


def learned_from_checkpoint(path: str | os.PathLike, label: str | None = None,
                            device: str | torch.device = "cpu", estimate: bool = False,
                            backbone: str | None = None) -> LearnedCodec:
    """A codec checkpoint (stage two's, or CompressAI's); its quality comes from the
    checkpoint's ``arch`` record; ``backbone`` names the architecture of checkpoints
    without one (CompressAI training checkpoints, bare state dicts)."""
    model, checkpoint = load_codec(path, backbone=backbone, device=device)
    arch = checkpoint.get("arch", {})
    quality = arch.get("quality")
    name = label or checkpoint_label(path)
    # The file's hash is part of the point's settings: a retrained checkpoint of the same name
    # is evaluated again, not taken for a finished point.
    digest = file_sha256(path)[:12]
    desc = f"checkpoint {Path(path).name} sha256 {digest} ({arch.get('backbone')}, quality {quality})"
    return LearnedCodec(model, name, None if quality is None else int(quality), desc, estimate,
                        source=checkpoint_label(path))


def checkpoint_label(path: str | os.PathLike) -> str:
    """A curve name from a checkpoint file name (``.pth.tar``/``.pth``/``.pt`` stripped)."""
    name = Path(path).name
    for suffix in (".pth.tar", ".pth", ".pt", ".tar", ".ckpt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name

