"""CompressAI codecs: building, checkpoints, and real bitstreams.

Everything the stages do with a learned codec goes through here:

* :func:`build_codec` - a CompressAI zoo architecture at a quality level, with the zoo's
  pretrained weights (downloaded by torch.hub, or found in its cache) or random init;
  ``N``/``M`` keyword arguments build a small custom codec of the same architecture.
* :func:`save_codec_checkpoint` / :func:`load_codec` - our checkpoint format
  (``{"format": "icm-codec", "arch": ..., "state_dict": ..., ...}``), which loads with
  ``torch.load(weights_only=True)``; CompressAI's own training checkpoints and bare state
  dicts load too.
* :func:`compress_image` / :func:`decompress_image` / :func:`real_bpp` (through
  :func:`bits_per_pixel`) - real bitstreams
  the way ``compressai.utils.eval_model`` makes them: zero padding, centred, to a multiple
  of 64; the rate counts the payload bytes over the ORIGINAL pixel count.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import urllib.error
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from compressai.models import (
    Cheng2020Anchor,
    Cheng2020Attention,
    CompressionModel,
    FactorizedPrior,
    FactorizedPriorReLU,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from compressai.ops import compute_padding
from compressai.zoo import load_state_dict as rename_zoo_keys
from compressai.zoo.image import cfgs as ZOO_CONFIGS
from compressai.zoo.image import model_urls as ZOO_URLS
from torch import nn

from icm.io import atomic_torch_save, check_tensors_sha256, file_sha256, tensors_sha256

CHECKPOINT_FORMAT = "icm-codec"

# Lambdas CompressAI trained its zoo models with (quality 1..8), per distortion metric.
QUALITY_LAMBDAS: dict[str, tuple[float, ...]] = {
    "mse": (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800),
    "ms-ssim": (2.40, 4.58, 8.73, 16.64, 31.73, 60.50, 115.37, 220.00),
}

# The fixed-rate image architectures of the CompressAI zoo, by zoo name.
ARCHITECTURES: dict[str, type[CompressionModel]] = {
    "bmshj2018-factorized": FactorizedPrior,
    "bmshj2018-factorized-relu": FactorizedPriorReLU,
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
    "mbt2018": JointAutoregressiveHierarchicalPriors,
    "cheng2020-anchor": Cheng2020Anchor,
    "cheng2020-attn": Cheng2020Attention,
}

# Short names people (and the paper's README) use for the zoo models.
BACKBONE_ALIASES: dict[str, str] = {
    "bmshj2018": "bmshj2018-hyperprior",
    "balle2018": "bmshj2018-hyperprior",
    "hyperprior": "bmshj2018-hyperprior",
    "factorized": "bmshj2018-factorized",
    "bmshj2018-factorized-prior": "bmshj2018-factorized",
    "minnen2018": "mbt2018",
    "mbt2018-joint": "mbt2018",
    "cheng2020": "cheng2020-anchor",
}

ZOO_HOST = "compressai.s3.amazonaws.com"


class PretrainedWeightsUnavailable(FileNotFoundError):
    """Zoo weights that are neither in torch.hub's cache nor downloadable."""


def lambda_for(quality: int, metric: str = "mse") -> float:
    """The rate-distortion lambda CompressAI used for ``quality`` (1..8) and ``metric``."""
    if metric not in QUALITY_LAMBDAS:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(QUALITY_LAMBDAS)})")
    if not 1 <= int(quality) <= len(QUALITY_LAMBDAS[metric]):
        raise ValueError(f"quality {quality} out of range 1..{len(QUALITY_LAMBDAS[metric])}")
    return QUALITY_LAMBDAS[metric][int(quality) - 1]


def resolve_backbone(name: str) -> str:
    """Zoo name for ``name`` (an alias, a zoo name, underscores or dashes, any case)."""
    key = str(name).strip().lower().replace("_", "-")
    key = BACKBONE_ALIASES.get(key, key)
    if key in ARCHITECTURES:
        return key
    if key.endswith("-vbr"):
        raise ValueError(
            f"backbone {name!r}: CompressAI's variable-rate models are not supported "
            "(they need per-call rate arguments); use a fixed-rate model"
        )
    known = sorted(set(ARCHITECTURES) | set(BACKBONE_ALIASES))
    raise ValueError(f"unknown backbone {name!r} (known: {', '.join(known)})")


def zoo_weights_url(backbone: str, quality: int, metric: str = "mse") -> str:
    """URL of CompressAI's pretrained weights for a zoo model."""
    name = resolve_backbone(backbone)
    try:
        return ZOO_URLS[name][metric][int(quality)]
    except KeyError:
        raise ValueError(
            f"CompressAI publishes no pretrained {name} weights for quality {quality} ({metric}); "
            "use --no_pretrained or --checkpoint PATH"
        ) from None


def zoo_weights_cache_path(url: str) -> Path:
    """Where torch.hub keeps (or would keep) the downloaded file for ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _host_resolves(host: str, timeout: float = 3.0) -> bool:
    """True when DNS answers for ``host`` within ``timeout`` seconds (DNS ignores socket
    timeouts, so the lookup runs in a daemon thread that may be abandoned)."""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def check_zoo_file_hash(path: Path) -> None:
    """CompressAI's zoo files name the first hex digits of their SHA-256
    (``bmshj2018-hyperprior-3-6d87be32.pth.tar``); a cached file that does not match them
    (a broken download, a replaced file) is a one-line error naming it."""
    match = re.search(r"-([0-9a-f]{8,64})\.pth(?:\.tar)?$", path.name)
    if match is None:
        return
    if not file_sha256(path).startswith(match.group(1)):
        raise ValueError(f"{path}: SHA-256 does not start with {match.group(1)} as its name says; "
                         "delete it to download it again")


def _download_zoo_state_dict(url: str) -> dict[str, torch.Tensor]:
    """The zoo state dict for ``url``: from torch.hub's cache, else downloaded; one-line
    :class:`PretrainedWeightsUnavailable` when neither works."""
    cached = zoo_weights_cache_path(url)
    unavailable = PretrainedWeightsUnavailable(
        f"cannot download CompressAI zoo weights {url}: save that file as {cached} "
        "or pass --checkpoint PATH (a local codec checkpoint)"
    )
    if not cached.is_file() and not _host_resolves(ZOO_HOST):
        raise unavailable
    if cached.is_file():
        check_zoo_file_hash(cached)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        state_dict = torch.hub.load_state_dict_from_url(
            url, progress=True, map_location="cpu", weights_only=True, check_hash=True
        )
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        if cached.is_file():
            raise ValueError(f"{cached}: cannot load zoo weights ({e})") from e
        raise unavailable from e
    finally:
        socket.setdefaulttimeout(old_timeout)
    return rename_zoo_keys(state_dict)


def build_codec(
    backbone: str,
    quality: int,
    metric: str = "mse",
    pretrained: bool = True,
    **arch_kwargs: Any,
) -> CompressionModel:
    """A CompressAI zoo codec.

    ``pretrained=True`` loads the zoo weights for (backbone, quality, metric) the way
    ``compressai.zoo`` does (torch.hub download or cache). ``pretrained=False`` gives a
    random init with the zoo's channel counts for that quality, overridden by
    ``arch_kwargs`` (e.g. ``N=64, M=96`` for a small ScaleHyperprior).
    """
    name = resolve_backbone(backbone)
    if metric not in QUALITY_LAMBDAS:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(QUALITY_LAMBDAS)})")
    zoo_sizes = ZOO_CONFIGS[name]
    if int(quality) not in zoo_sizes:
        raise ValueError(f"{name}: quality {quality} out of range {min(zoo_sizes)}..{max(zoo_sizes)}")
    if pretrained:
        if arch_kwargs:
            raise ValueError(
                f"{name}: custom sizes {arch_kwargs} have no pretrained weights; use pretrained=False"
            )
        state_dict = _download_zoo_state_dict(zoo_weights_url(name, quality, metric))
        return ARCHITECTURES[name].from_state_dict(state_dict)
    sizes = dict(zip(("N", "M"), zoo_sizes[int(quality)]))
    sizes.update({k: v for k, v in arch_kwargs.items() if v is not None})
    return ARCHITECTURES[name](**sizes)


def architecture_sizes(model: nn.Module) -> dict[str, int]:
    """The ``N``/``M`` channel counts of a CompressAI model (what its constructor takes)."""
    model = unwrap(model)
    sizes = {}
    for key in ("N", "M"):
        value = getattr(model, key, None)
        if isinstance(value, int):
            sizes[key] = value
    return sizes


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


# ----------------------------------------------------------------------------- checkpoints


def save_codec_checkpoint(
    path: str | os.PathLike, model: nn.Module, arch: dict[str, Any], extra: dict[str, Any] | None = None
) -> None:
    """Write a codec checkpoint atomically, after refreshing its entropy-coder CDFs.

    ``arch`` holds at least ``backbone``, ``quality`` and ``metric`` (plus ``N``/``M`` for
    custom sizes, filled in from the model when missing). ``extra`` (optimisers, scheduler,
    counters, RNG states, config) must hold only tensors and plain Python values so the
    file loads with ``torch.load(weights_only=True)``.
    """
    model = unwrap(model)
    model.update(force=True)
    arch = {**architecture_sizes(model), **arch}
    arch["backbone"] = resolve_backbone(arch["backbone"])
    state = model.state_dict()
    checkpoint = {"format": CHECKPOINT_FORMAT, "arch": arch, "state_dict": state, "state_sha256": tensors_sha256(state)}
    for key, value in (extra or {}).items():
        if key in checkpoint:
            raise ValueError(f"extra checkpoint key {key!r} clashes with a reserved key")
        checkpoint[key] = value
    atomic_torch_save(path, checkpoint)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    with path.open("rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        raise ValueError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle; "
                         f"it starts with {head!r})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling fails in many ways; all mean "bad file"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first_sentence = first_line.split(". ")[0].rstrip(".")
        raise ValueError(f"{path}: cannot load as a weights-only checkpoint ({first_sentence})") from e
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    check_tensors_sha256(checkpoint, path)
    return checkpoint


def checkpoint_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model state dict inside ours, CompressAI's (``state_dict``/``network``/...) or a
    bare state dict, with ``module.`` prefixes and old zoo key names normalised."""
    state_dict = checkpoint
    for key in ("state_dict", "network", "model_state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            state_dict = checkpoint[key]
            break
    return rename_zoo_keys(dict(state_dict))


def load_codec(
    path: str | os.PathLike | None,
    backbone: str | None = None,
    quality: int | None = None,
    metric: str = "mse",
    device: str | torch.device = "cpu",
    pretrained: bool = True,
) -> tuple[CompressionModel, dict[str, Any]]:
    """A codec ready for real coding (eval mode, fresh CDFs) and its checkpoint dict.

    With ``path`` the architecture comes from the checkpoint's ``arch`` record, or from
    ``backbone`` for CompressAI training checkpoints and bare state dicts (sizes are read
    off the weights). Without ``path`` it is :func:`build_codec` (zoo or random weights)
    and the checkpoint dict is ``{"arch": ...}`` only.
    """
    if path is None:
        if backbone is None or quality is None:
            raise ValueError("no codec checkpoint given: pass a backbone and a quality")
        model = build_codec(backbone, quality, metric=metric, pretrained=pretrained)
        checkpoint: dict[str, Any] = {
            "arch": {"backbone": resolve_backbone(backbone), "quality": int(quality), "metric": metric}
        }
    else:
        checkpoint = read_checkpoint(path)
        arch = checkpoint.get("arch") if isinstance(checkpoint.get("arch"), dict) else {}
        name = arch.get("backbone") or backbone
        if name is None:
            raise ValueError(f"{path}: checkpoint has no architecture record; pass the backbone")
        name = resolve_backbone(name)
        if backbone is not None and arch.get("backbone") and resolve_backbone(backbone) != name:
            warnings.warn(
                f"{path}: checkpoint holds a {name} codec; backbone {backbone!r} ignored", stacklevel=2
            )
        try:
            model = ARCHITECTURES[name].from_state_dict(checkpoint_state_dict(checkpoint))
        except (KeyError, RuntimeError) as e:
            first_line = str(e).strip().splitlines()[0]
            raise ValueError(f"{path}: not a {name} state dict ({first_line})") from e
        if not arch:
            checkpoint = {**checkpoint, "arch": {"backbone": name, "quality": quality, "metric": metric}}
    model.update(force=True)
    return model.to(device).eval(), checkpoint


# ----------------------------------------------------------------------------- bitstreams


def pad_to_multiple(x: torch.Tensor, multiple: int = 64) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad ``x [N,C,H,W]`` centred up to a multiple of ``multiple`` (as CompressAI's
    eval_model does). Returns the padded tensor and ``pad = (left, right, top, bottom)``."""
    pad, _ = compute_padding(x.shape[-2], x.shape[-1], min_div=multiple)
    return F.pad(x, pad, mode="constant", value=0.0), pad


def crop(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    return F.pad(x, tuple(-p for p in pad))


@dataclass
class CompressedImage:
    """A real bitstream: CompressAI's ``strings`` and latent ``shape``, plus what is needed
    to restore the original size."""

    strings: list[list[bytes]]
    shape: tuple[int, ...]
    image_size: tuple[int, int]  # (H, W) of the original, before padding
    pad: tuple[int, int, int, int]  # (left, right, top, bottom)

    @property
    def num_bytes(self) -> int:
        """Payload size: every string of every latent, summed over the batch."""
        return sum(len(s) for stream in self.strings for s in stream)

    @property
    def num_images(self) -> int:
        return len(self.strings[0])


@torch.no_grad()
def compress_image(model: CompressionModel, x: torch.Tensor, multiple: int = 64) -> CompressedImage:
    """Encode ``x [N,3,H,W]`` in [0,1] into a real bitstream (the model must be updated)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an image batch [N, 3, H, W], got shape {tuple(x.shape)}")
    model = unwrap(model)
    x_padded, pad = pad_to_multiple(x, multiple)
    out = model.compress(x_padded)
    return CompressedImage(
        strings=[list(s) for s in out["strings"]],
        shape=tuple(int(v) for v in out["shape"]),
        image_size=(int(x.shape[-2]), int(x.shape[-1])),
        pad=pad,
    )


@torch.no_grad()
def decompress_image(model: CompressionModel, compressed: CompressedImage) -> torch.Tensor:
    """Decode a :class:`CompressedImage` into ``x_hat [N,3,H,W]``, cropped and clamped to [0,1]."""
    model = unwrap(model)
    out = model.decompress(compressed.strings, torch.Size(compressed.shape))
    return crop(out["x_hat"], compressed.pad).clamp_(0, 1)


def bits_per_pixel(num_bytes: float, height: int, width: int) -> float:
    """Bits per pixel of ``num_bytes`` bytes coding one ``height`` x ``width`` image (the one
    bpp formula: learned codecs, JPEG/WebP and raw images alike)."""
    return num_bytes * 8.0 / (height * width)


def real_bpp(compressed: CompressedImage) -> float:
    """Bits per pixel of the bitstream, over the ORIGINAL (unpadded) pixels (batch mean)."""
    height, width = compressed.image_size
    return bits_per_pixel(compressed.num_bytes, height, width) / compressed.num_images


def estimated_bpp(likelihoods: dict[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """Rate the entropy model predicts: sum of -log2(likelihood) over ``num_pixels``
    (batch size times H times W)."""
    return sum(-torch.log2(lk).sum() for lk in likelihoods.values()) / num_pixels



def noisy_reconstruction(model: CompressionModel, x: torch.Tensor, multiple: int = 64) -> torch.Tensor:
    """``x_hat`` of ``x [N,3,H,W]`` with CompressAI's training-time proxy for quantisation
    (additive uniform noise in the entropy models), differentiable with respect to ``x``.

    The noise comes from the global RNG (seed it for reproducible draws); the model's own
    mode is restored afterwards. Padding and cropping as for real bitstreams.
    """
    model = unwrap(model)
    was_training = model.training
    x_padded, pad = pad_to_multiple(x, multiple)
    try:
        model.train()  # entropy models add noise in train mode (there is no other train-only layer)
        x_hat = model(x_padded)["x_hat"]
    finally:
        model.train(was_training)
    return crop(x_hat, pad)


def perturbation_share(moved: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per image (first dimension), ``<moved, delta> / <delta, delta>``: the share of a
    perturbation ``delta`` that a change ``moved`` of a codec's decode reproduces (1 = all of
    it, 0 = none); NaN for an image without perturbation, where no share is defined."""
    moved, delta = moved.flatten(1).double(), delta.flatten(1).double()
    energy = (delta * delta).sum(1)
    return torch.where(energy > 0, (moved * delta).sum(1) / energy.clamp_min(1e-30), torch.full_like(energy, torch.nan))
