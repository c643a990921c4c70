"""Meta-AAFG: meta-adversarial augmentation of images for a set of detectors (stage one).

Our reading of the paper, following MGAA (meta-gradient adversarial attack: meta-train on
some models of a zoo, meta-test on a held-out one) adapted to detectors, with each model's
input gradient normalised per image so no detector dominates the sum. Per batch, with model
set M, direction s = -1 (helpful: minimise detection loss, the default) or +1 (harmful),
P = projection onto the epsilon L-inf ball around x0 and onto [0, 1], and
nrm(g) = g / mean|g| per image::

    x = x0 ; mu = 0
    for t in 1..T:                                   # meta_steps
        m_te = M[(t - 1) mod |M|] ; M_tr = M - {m_te}
        xt = x
        for k in 1..K:                               # inner_steps: meta-train
            mu = mu + sum_{m in M_tr} nrm(grad L_m(xt))
            xt = P(xt + s * alpha_in * sign(mu))
        mu = mu + nrm(grad L_te(xt))                 # meta-test on the held-out model
        xh = P(xt + s * alpha_out * sign(mu))
        x = P(x + (xh - xt))                         # keep only the meta-test displacement
    return round(255 * x) / 255

Choices the paper leaves open, made here:
- A single-model set cannot be split: then M_tr = M and m_te is that same model.
- ``meta=False`` is the ablation baseline: plain ensemble PGD with the same momentum-style
  accumulation (mu += sum of normalised gradients, step s * alpha_in * sign(mu)) and exactly
  the same number of gradient evaluations. Models are evaluated in a fixed cycle and a step
  is taken after every |M| evaluations; when the budget is not a multiple of |M| the last
  step uses the first (budget mod |M|) models.
- The perturbation is always fp32; on CUDA only the detector forwards run under bf16
  autocast (fp16/bf16 spacing near 1.0 would swallow steps of 1/255).
- Targets are fixed for the whole batch: ground truth, or each detector's own predictions
  on the clean x0 ("pseudo"), computed once.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the detector families import torchvision/ultralytics: not needed to run
    from icm.detectors.base import Detector


DIRECTIONS = {"helpful": -1.0, "harmful": 1.0}


@dataclass
class MetaAAFGConfig:
    """Hyper-parameters of one Meta-AAFG run (defaults of DESIGN.md)."""

    epsilon: float = 8 / 255
    meta_steps: int = 10  # T
    inner_steps: int = 5  # K
    alpha_in: float | None = None  # None: epsilon / 16
    alpha_out: float | None = None  # None: epsilon / meta_steps
    direction: str = "helpful"  # helpful (minimise the loss) or harmful
    meta: bool = True  # False: plain ensemble PGD with the same gradient budget
    autocast: bool = True  # bf16 autocast inside detector forwards, CUDA only

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {self.direction!r}")
        if not 0 < self.epsilon <= 1:
            raise ValueError(f"epsilon must be in (0, 1], got {self.epsilon}")
        if self.meta_steps < 1 or self.inner_steps < 1:
            raise ValueError("meta_steps and inner_steps must be at least 1")

    @property
    def step_in(self) -> float:
        return self.epsilon / 16 if self.alpha_in is None else self.alpha_in

    @property
    def step_out(self) -> float:
        return self.epsilon / self.meta_steps if self.alpha_out is None else self.alpha_out

    @property
    def sign(self) -> float:
        return DIRECTIONS[self.direction]


def gradient_budget(config: MetaAAFGConfig, num_models: int) -> int:
    """Gradient evaluations (one model, one batch) that one batch costs, meta on or off."""
    if num_models < 1:
        raise ValueError("the model set is empty")
    seen_per_step = max(num_models - 1, 1)
    return config.meta_steps * (config.inner_steps * seen_per_step + 1)


def project(x: torch.Tensor, x0: torch.Tensor, epsilon: float) -> torch.Tensor:
    """P: onto the L-inf ball of radius ``epsilon`` around ``x0``, then onto [0, 1]."""
    return torch.minimum(torch.maximum(x, x0 - epsilon), x0 + epsilon).clamp_(0.0, 1.0)


def normalise(grad: torch.Tensor) -> torch.Tensor:
    """nrm(g) = g / mean|g|, per image (a zero gradient stays zero)."""
    scale = grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-20)
    return grad / scale


def _forward_context(x: torch.Tensor, config: MetaAAFGConfig):
    if config.autocast and x.device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _model_gradient(detector: Detector, x: torch.Tensor, targets, config: MetaAAFGConfig,
                    counter: Counter | None) -> torch.Tensor:
    """nrm(grad of the detector's loss w.r.t. x): one forward, one autograd.grad, graph freed."""
    x = x.detach().requires_grad_(True)
    with _forward_context(x, config):
        loss = detector.loss(x, targets)
    if counter is not None:
        counter["gradient_evaluations"] += 1
    if not loss.requires_grad:  # e.g. no target and nothing detected: loss does not see x
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(loss.float(), x, allow_unused=True)
    if grad is None:
        return torch.zeros_like(x)
    return normalise(grad.float())


@torch.no_grad()
def per_image_losses(detectors: Mapping[str, Detector], images: torch.Tensor,
                     targets: Mapping[str, list], config: MetaAAFGConfig) -> dict[str, torch.Tensor]:
    """Each detector's loss on each image separately: {name: float tensor [B] on CPU}.

    Evaluated under a fixed seed (the caller's random state is restored afterwards), so a
    detector that samples inside its loss (Faster R-CNN's proposals) scores the clean and the
    augmented images with the same draws.
    """
    out = {}
    with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
        torch.manual_seed(0)
        for name, detector in detectors.items():
            values = []
            for i in range(len(images)):
                with _forward_context(images, config):
                    values.append(detector.loss(images[i : i + 1], targets[name][i : i + 1]).float())
            out[name] = torch.stack(values).cpu()
    return out


def as_detector_dict(detectors: Mapping[str, Detector] | Sequence[Detector]) -> dict[str, Detector]:
    """A name -> detector mapping (a sequence is keyed by each detector's ``name``)."""
    if isinstance(detectors, Mapping):
        named = dict(detectors)
    else:
        named = {d.name: d for d in detectors}
        if len(named) != len(detectors):
            raise ValueError("detectors share a name; pass a {name: detector} mapping")
    if not named:
        raise ValueError("the model set is empty")
    return named


def fixed_targets(images: torch.Tensor, targets, detectors: Mapping[str, Detector]) -> dict[str, list]:
    """The targets each detector's loss uses for the whole batch.

    ``targets`` is a list of ground-truth dicts (shared by all detectors), ``"pseudo"``
    (each detector's own predictions on the clean images, computed once here) or a
    ready {name: list of dicts} mapping.
    """
    if isinstance(targets, str):
        if targets != "pseudo":
            raise ValueError(f"targets must be ground-truth dicts or 'pseudo', got {targets!r}")
        # In full precision (one forward per model and batch): bf16 boxes would be coarse.
        return {name: d.pseudo_targets(list(images.detach())) for name, d in detectors.items()}
    if isinstance(targets, Mapping):
        return {name: targets[name] for name in detectors}
    return {name: targets for name in detectors}


def _meta_attack(x0, targets, detectors, config, counter):
    """The meta-train / meta-test loop of the module docstring; returns x in fp32."""
    names = list(detectors)
    s, eps = config.sign, config.epsilon
    x = x0.clone()
    mu = torch.zeros_like(x0)
    for t in range(config.meta_steps):
        held_out = names[t % len(names)]
        meta_train = [n for n in names if n != held_out] or names  # one model: no split
        xt = x.clone()
        for _ in range(config.inner_steps):
            for name in meta_train:
                mu += _model_gradient(detectors[name], xt, targets[name], config, counter)
            xt = project(xt + s * config.step_in * mu.sign(), x0, eps)
        mu += _model_gradient(detectors[held_out], xt, targets[held_out], config, counter)
        xh = project(xt + s * config.step_out * mu.sign(), x0, eps)
        x = project(x + (xh - xt), x0, eps)
    return x


def _ensemble_pgd(x0, targets, detectors, config, counter):
    """Baseline (meta off): ensemble PGD with the same accumulation and gradient budget."""
    names = list(detectors)
    budget = gradient_budget(config, len(names))
    s, eps = config.sign, config.epsilon
    x = x0.clone()
    mu = torch.zeros_like(x0)
    for start in range(0, budget, len(names)):
        for name in names[: budget - start]:
            mu += _model_gradient(detectors[name], x, targets[name], config, counter)
        x = project(x + s * config.step_in * mu.sign(), x0, eps)
    return x


def augment_batch(
    images: torch.Tensor,
    targets,
    detectors: Mapping[str, Detector] | Sequence[Detector],
    config: MetaAAFGConfig,
    counter: Counter | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Meta-AAFG on one batch of equal-size images.

    Args:
        images: float [B, 3, H, W] in [0, 1] (8-bit values), on the detectors' device.
        targets: list of B ground-truth dicts (``boxes`` xyxy pixels, ``labels``),
            ``"pseudo"``, or {name: list of B dicts}.
        detectors: the model set, {name: Detector} (or a sequence keyed by ``.name``).
        config: :class:`MetaAAFGConfig`.
        counter: optional ``collections.Counter``; ``"gradient_evaluations"`` is increased
            once per model gradient (it equals :func:`gradient_budget` per batch).

    Returns:
        (augmented [B, 3, H, W] rounded to multiples of 1/255, loss before {name: [B]} on x0,
        loss after {name: [B]} on the augmented images), losses per image on CPU.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    detectors = as_detector_dict(detectors)
    x0 = images.detach().float()
    targets = fixed_targets(x0, targets, detectors)
    losses_before = per_image_losses(detectors, x0, targets, config)
    attack = _meta_attack if config.meta else _ensemble_pgd
    x = attack(x0, targets, detectors, config, counter)
    augmented = torch.round(x * 255.0) / 255.0
    losses_after = per_image_losses(detectors, augmented, targets, config)
    return augmented, losses_before, losses_after


def linf_8bit(augmented: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image L-inf distance in 8-bit units: [B] integers as float."""
    diff = (augmented * 255).round() - (original * 255).round()
    return diff.abs().flatten(1).amax(dim=1)


def max_linf_8bit(epsilon: float) -> int:
    """The largest 8-bit change an epsilon allows after rounding: round(255 * epsilon)."""
    return int(math.floor(255 * epsilon + 0.5))
