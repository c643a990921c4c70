"""Meta-AAFG: meta-adversarial augmentation of images for a set of detectors (stage one).

Our reading of the paper, following MGAA (meta-gradient adversarial attack: meta-train on
some models of a zoo, meta-test on a held-out one) adapted to detectors, with each model's
input gradient normalised per image so no detector dominates the sum. Per image, with model
set M, direction s = -1 (helpful: minimise detection loss, the default) or +1 (harmful),
P = projection onto the epsilon L-inf ball around x0 and onto [0, 1], clip01 = onto [0, 1]
only, and g(m, x) = nrm(pool_S(smooth_K(grad_x L_m(D(C(x)))))) the transformed gradient of
one model::

    x = x0 ; mu = 0
    for t in 1..T:                                   # meta_steps
        S_t = M, or N models of M drawn at random   # sample_models
        m_te = S_t[(t - 1) mod |S_t|] (M), or the last drawn ; M_tr = S_t - {m_te}
        xt = x
        for k in 1..K:                               # inner_steps: meta-train
            mu = mu + sum_{m in M_tr} g(m, xt)
            xt = P(xt + s * alpha_in * up_S(sign(mu)))
        mu = mu + g(m_te, xt)                        # meta-test on the held-out model
        xh = clip01(xt + s * alpha_out * up_S(sign(mu)))
        x = P(x + (xh - xt))                         # keep only the meta-test displacement
    return round(255 * x) / 255

As in MGAA's official code, the meta-test step is not projected onto the ball around x0
before its displacement is added to x: xt already sits on the ball's edge after the inner
loop, and projecting xh there would swallow the step. x moves at most alpha_out per meta
iteration, so with alpha_out = epsilon / T meta on reaches the full epsilon wherever the
gradients agree, as meta off does.

The transforms inside g, each off by default (MGAA's official values in brackets):

- ``C`` (``codec``, an extension beyond the paper): the loss is taken on the frozen anchor
  codec's reconstruction, with CompressAI's additive-noise proxy for quantisation.
- ``D`` (``diversity`` p [0.7]): with probability p the image is upscaled (nearest) by a
  random factor in [1, DIVERSITY_MAX_SCALE) and zero-padded at a random offset to
  DIVERSITY_MAX_SCALE times its size; the targets' boxes are moved alike.
- ``smooth_K`` (``smooth`` K [15]): translation-invariant smoothing of the gradient with a
  K x K Gaussian kernel of sigma (K - 1) / 6 pixels (MGAA's ``gkern(K, 3)``).
- ``pool_S`` / ``up_S`` (``delta_scale`` S [1]): mu lives at 1/S resolution (the gradient
  is average-pooled over S x S blocks) and the step direction sign(mu) is upsampled
  bilinearly, so the perturbation varies on the scale of S pixels.
- ``sample_models`` N [6 of 10]: each meta iteration uses a random subset S_t of N models;
  the last one drawn is held out (MGAA's ``random.sample`` then ``pop``).

Choices the paper leaves open, made here:
- A single-model set cannot be split: then M_tr = M and m_te is that same model.
- ``meta=False`` is the ablation baseline: ensemble PGD with the same accumulation and
  exactly the same number of gradient evaluations per image. Models are evaluated in a
  fixed cycle (or, with ``sample_models`` N, N models drawn afresh for every step) and a step
  of s * alpha_in * up_S(sign(mu)) is taken after each group; when the budget is not a
  multiple of the group size the last step uses a shorter group.
- Every random draw (model subsets, diversity, Faster R-CNN's samplers, codec noise) comes
  from one generator per image, seeded from the run's seed and the image id, so an image's
  perturbation depends neither on its batch-mates nor on the order of processing. Detectors
  whose loss samples get a fresh seed at every gradient evaluation (so one loss per image);
  their before / after scores use one further draw, the same for both.
- A batch may hold images of different sizes. They are kept zero-padded to the largest;
  each image's gradient is cropped to its own size before smoothing, pooling and
  normalisation, and its step is upsampled to its own size, so all of the algorithm's own
  arithmetic is per image. A detector gets the images at their own sizes, one forward per
  group that it puts on the same canvas (``Detector.canvas``: YOLO's letterbox and
  CenterNet's 32-multiple pad, SSD's and Darknet's fixed square), so no image's input is
  changed by its batch-mates' padding. An image's result is then its batch-1 result up to
  the float arithmetic of batched convolutions, which ``benchmarks/bench_meta_aafg.py
  --mixed_sizes`` measures.
- The perturbation is always fp32; on CUDA only the detector forwards run under bf16
  autocast (fp16/bf16 spacing near 1.0 would swallow steps of 1/255).
- Targets are fixed for the whole run: ground truth, or each detector's own predictions on
  the clean x0 ("pseudo"), computed once.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the detector families import torchvision/ultralytics: not needed to run
    from icm.detectors.base import Detector

DIRECTIONS = {"helpful": -1.0, "harmful": 1.0}
DIVERSITY_MAX_SCALE = 1.1  # MGAA: 299 px images resized to 299..329 and padded to 330

# x -> the codec's reconstruction of x (differentiable); see MetaAAFGConfig's codec note.
Reconstruction = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class MetaAAFGConfig:
    """Hyper-parameters of one Meta-AAFG run (see the module docstring)."""

    epsilon: float = 8 / 255  # MGAA: 16/255
    meta_steps: int = 10  # T (MGAA: 10)
    inner_steps: int = 5  # K (MGAA: 8)
    alpha_in: float | None = None  # None: epsilon / 16 (as MGAA)
    alpha_out: float | None = None  # None: epsilon / meta_steps (as MGAA)
    direction: str = "helpful"  # helpful (minimise the loss) or harmful
    meta: bool = True  # False: plain ensemble PGD with the same gradient budget
    sample_models: int = 0  # N models drawn per meta iteration; 0: all (MGAA: 6 of 10)
    diversity: float = 0.0  # probability of resize-and-pad per gradient (MGAA: 0.7)
    smooth: int = 0  # Gaussian gradient smoothing kernel size, odd; 0: off (MGAA: 15)
    delta_scale: int = 1  # perturbation resolution 1/S (MGAA: 1)
    autocast: bool = True  # bf16 autocast inside detector forwards, CUDA only

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {self.direction!r}")
        if not 0 < self.epsilon <= 1:
            raise ValueError(f"epsilon must be in (0, 1], got {self.epsilon}")
        if self.meta_steps < 1 or self.inner_steps < 1:
            raise ValueError("meta_steps and inner_steps must be at least 1")
        if self.sample_models < 0 or self.sample_models == 1:
            raise ValueError(f"sample_models must be 0 (all) or at least 2, got {self.sample_models}")
        if not 0 <= self.diversity <= 1:
            raise ValueError(f"diversity is a probability in [0, 1], got {self.diversity}")
        if self.smooth < 0 or (self.smooth and self.smooth % 2 == 0):
            raise ValueError(f"smooth must be 0 (off) or an odd kernel size, got {self.smooth}")
        if self.delta_scale < 1:
            raise ValueError(f"delta_scale must be at least 1, got {self.delta_scale}")

    @property
    def step_in(self) -> float:
        return self.epsilon / 16 if self.alpha_in is None else self.alpha_in

    @property
    def step_out(self) -> float:
        return self.epsilon / self.meta_steps if self.alpha_out is None else self.alpha_out

    @property
    def sign(self) -> float:
        return DIRECTIONS[self.direction]

    def subset_size(self, num_models: int) -> int:
        """|S_t|: the models one meta iteration uses."""
        return min(self.sample_models, num_models) if self.sample_models else num_models


def gradient_budget(config: MetaAAFGConfig, num_models: int) -> int:
    """Gradient evaluations (one model, one image) that one image costs, meta on or off."""
    if num_models < 1:
        raise ValueError("the model set is empty")
    seen_per_step = max(config.subset_size(num_models) - 1, 1)
    return config.meta_steps * (config.inner_steps * seen_per_step + 1)


def image_seed(seed: int, image_id: str) -> int:
    """The seed of one image's generator: a hash of the run's seed and the image id."""
    digest = hashlib.sha256(f"{seed}\x00{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def project(x: torch.Tensor, x0: torch.Tensor, epsilon: float) -> torch.Tensor:
    """P: onto the L-inf ball of radius ``epsilon`` around ``x0``, then onto [0, 1]."""
    return torch.minimum(torch.maximum(x, x0 - epsilon), x0 + epsilon).clamp_(0.0, 1.0)


def normalise(grad: torch.Tensor) -> torch.Tensor:
    """nrm(g) = g / mean|g|, per image (a zero gradient stays zero)."""
    scale = grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-20)
    return grad / scale


def gaussian_kernel(size: int) -> torch.Tensor:
    """A normalised ``size`` x ``size`` Gaussian of sigma (size - 1) / 6 (MGAA's gkern(size, 3))."""
    sigma = max((size - 1) / 6, 1e-6)
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k1 = torch.exp(-0.5 * (r / sigma) ** 2)
    k2 = torch.outer(k1, k1)
    return (k2 / k2.sum()).float()


def smooth_gradient(grad: torch.Tensor, size: int) -> torch.Tensor:
    """smooth_K: each channel convolved with :func:`gaussian_kernel` (zero padding, same size)."""
    kernel = gaussian_kernel(size).to(grad)[None, None].expand(grad.shape[1], 1, size, size)
    return F.conv2d(grad, kernel, padding=size // 2, groups=grad.shape[1])


def pool_gradient(grad: torch.Tensor, scale: int) -> torch.Tensor:
    """pool_S: the mean over S x S blocks (partial blocks at the edges included)."""
    return F.avg_pool2d(grad, scale, ceil_mode=True) if scale > 1 else grad


def step_direction(mu: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """up_S(sign(mu)): sign(mu) at full resolution (bilinear upsampling when S > 1)."""
    direction = mu.sign()
    if tuple(direction.shape[-2:]) == tuple(size):
        return direction
    return F.interpolate(direction, size=size, mode="bilinear", align_corners=False).clamp_(-1.0, 1.0)


def diverse_input(x: torch.Tensor, target: dict, generator: torch.Generator,
                  probability: float) -> tuple[torch.Tensor, dict]:
    """D: with ``probability``, upscale ``x [3, H, W]`` (nearest) by a random factor in
    [1, DIVERSITY_MAX_SCALE) and zero-pad it at a random offset to DIVERSITY_MAX_SCALE times
    its size; the boxes of ``target`` are scaled and shifted alike. Otherwise unchanged."""
    if float(torch.rand((), generator=generator)) >= probability:
        return x, target
    height, width = x.shape[-2:]
    out_h, out_w = round(height * DIVERSITY_MAX_SCALE), round(width * DIVERSITY_MAX_SCALE)
    new_h = int(torch.randint(height, max(out_h, height + 1), (), generator=generator))
    new_w = min(max(round(width * new_h / height), width), out_w)
    top = int(torch.randint(0, out_h - new_h + 1, (), generator=generator))
    left = int(torch.randint(0, out_w - new_w + 1, (), generator=generator))
    resized = F.interpolate(x[None], size=(new_h, new_w), mode="nearest")[0]
    padded = F.pad(resized, (left, out_w - new_w - left, top, out_h - new_h - top), value=0.0)
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
    scale = boxes.new_tensor([new_w / width, new_h / height] * 2)
    shift = boxes.new_tensor([left, top] * 2)
    return padded, {**target, "boxes": boxes * scale + shift}


def _forward_context(x: torch.Tensor, config: MetaAAFGConfig):
    if config.autocast and x.device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """The global RNG forked and seeded (for code that draws from it: codec noise)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _loss(detector: Detector, images, targets, seed: int | None) -> torch.Tensor:
    """The detector's loss; a detector whose loss samples draws from ``seed``."""
    if seed is not None and getattr(detector, "samples_in_loss", False):
        return detector.loss(images, targets, seed=seed)
    return detector.loss(images, targets)


def _by_canvas(detector: Detector, inputs: Sequence[torch.Tensor]) -> list[list[int]]:
    """Rows of ``inputs`` grouped by the canvas the detector puts them on (first-seen order)."""
    canvas = getattr(detector, "canvas", None)
    groups: dict[tuple, list[int]] = {}
    for row, xi in enumerate(inputs):
        key = canvas(*xi.shape[-2:]) if canvas is not None else tuple(xi.shape[-2:])
        groups.setdefault(tuple(key), []).append(row)
    return list(groups.values())


@dataclass
class _Run:
    """What every gradient evaluation of one batch needs."""

    detectors: dict[str, Detector]
    targets: dict[str, list]
    generators: list[torch.Generator]
    config: MetaAAFGConfig
    codec: Reconstruction | None
    counter: Counter | None
    sizes: list[tuple[int, int]]  # each image's (H, W); the batch is zero-padded to the largest

    @property
    def padded_size(self) -> tuple[int, int]:
        return max(h for h, _ in self.sizes), max(w for _, w in self.sizes)

    def _transform(self, grad: torch.Tensor, images: Sequence[int]) -> torch.Tensor:
        """nrm(pool_S(smooth_K(grad))) of each row at its image's size, zero-padded to the
        batch's (pooled) size."""
        config = self.config

        def transform(g: torch.Tensor) -> torch.Tensor:
            if config.smooth:
                g = smooth_gradient(g, config.smooth)
            return normalise(pool_gradient(g, config.delta_scale))

        if all(self.sizes[i] == tuple(grad.shape[-2:]) for i in images):
            return transform(grad)
        scale = config.delta_scale
        out = grad.new_zeros(*grad.shape[:2], *(-(-n // scale) for n in grad.shape[-2:]))
        for row, i in enumerate(images):
            h, w = self.sizes[i]
            g = transform(grad[row : row + 1, :, :h, :w])
            out[row : row + 1, :, : g.shape[-2], : g.shape[-1]] = g
        return out

    def direction(self, mu: torch.Tensor) -> torch.Tensor:
        """up_S(sign(mu)) of each image at its own size, zero-padded to the batch's size."""
        padded = self.padded_size
        if all(size == padded for size in self.sizes):
            return step_direction(mu, padded)
        scale = self.config.delta_scale
        out = mu.new_zeros(*mu.shape[:2], *padded)
        for i, (h, w) in enumerate(self.sizes):
            low = mu[i : i + 1, :, : -(-h // scale), : -(-w // scale)]
            out[i : i + 1, :, :h, :w] = step_direction(low, (h, w))
        return out

    def gradient(self, name: str, x: torch.Tensor, images: Sequence[int]) -> torch.Tensor:
        """g(name, x) for the images ``images`` of the batch (x holds just those rows)."""
        detector, config = self.detectors[name], self.config
        samples = getattr(detector, "samples_in_loss", False)
        x = x.detach().requires_grad_(True)
        inputs, targets, seeds = [], [], []
        for row, i in enumerate(images):
            generator = self.generators[i]
            h, w = self.sizes[i]
            xi, ti = x[row, :, :h, :w], self.targets[name][i]
            if self.codec is not None:
                with _seeded(_draw_seed(generator), x.device):
                    xi = self.codec(xi[None])[0]
            if config.diversity > 0:
                xi, ti = diverse_input(xi, ti, generator, config.diversity)
            inputs.append(xi)
            targets.append(ti)
            seeds.append(_draw_seed(generator) if samples else None)
        with _forward_context(x, config):
            if samples:  # one loss per image: its own random draws
                loss = sum(_loss(detector, [xi], [ti], s) for xi, ti, s in zip(inputs, targets, seeds))
            else:  # one forward per canvas: batch-mates on it do not change each other's input
                loss = 0
                for rows in _by_canvas(detector, inputs):
                    group = [inputs[r] for r in rows]
                    same_size = len({tuple(xi.shape) for xi in group}) == 1
                    loss = loss + detector.loss(torch.stack(group) if same_size else group, [targets[r] for r in rows])
        if self.counter is not None:
            self.counter["gradient_evaluations"] += len(images)
        if not loss.requires_grad:  # e.g. no target and nothing detected: loss does not see x
            grad = torch.zeros_like(x)
        else:
            (grad,) = torch.autograd.grad(loss.float(), x, allow_unused=True)
            grad = torch.zeros_like(x) if grad is None else grad.float()
        return self._transform(grad, images)

    def accumulate(self, mu: torch.Tensor, x: torch.Tensor, models: list[list[str]]) -> None:
        """mu[i] += sum of g(m, x[i]) over the models ``models[i]`` of each image i; each model
        runs once on the sub-batch of images that use it, in the model set's order."""
        for name in self.detectors:
            rows = [i for i, names in enumerate(models) if name in names]
            if rows:
                mu[rows] += self.gradient(name, x[rows], rows)


def _meta_attack(x0: torch.Tensor, run: _Run) -> torch.Tensor:
    """The meta-train / meta-test loop of the module docstring; returns x in fp32."""
    config, names = run.config, list(run.detectors)
    s, eps = config.sign, config.epsilon
    x = x0.clone()
    mu = torch.zeros_like(pool_gradient(x0, config.delta_scale))
    for t in range(config.meta_steps):
        meta_train, held_out = [], []
        for generator in run.generators:
            if config.sample_models:
                drawn = torch.randperm(len(names), generator=generator)[: config.subset_size(len(names))]
                subset = [names[j] for j in drawn.tolist()]
                test = subset[-1]
            else:
                subset, test = names, names[t % len(names)]
            meta_train.append([n for n in subset if n != test] or subset)  # one model: no split
            held_out.append([test])
        xt = x.clone()
        for _ in range(config.inner_steps):
            run.accumulate(mu, xt, meta_train)
            xt = project(xt + s * config.step_in * run.direction(mu), x0, eps)
        run.accumulate(mu, xt, held_out)
        xh = (xt + s * config.step_out * run.direction(mu)).clamp(0.0, 1.0)
        x = project(x + (xh - xt), x0, eps)
    return x


def _ensemble_pgd(x0: torch.Tensor, run: _Run) -> torch.Tensor:
    """Baseline (meta off): ensemble PGD with the same accumulation and gradient budget."""
    config, names = run.config, list(run.detectors)
    budget = gradient_budget(config, len(names))
    group = config.subset_size(len(names))
    s, eps = config.sign, config.epsilon
    x = x0.clone()
    mu = torch.zeros_like(pool_gradient(x0, config.delta_scale))
    for start in range(0, budget, group):
        count = min(group, budget - start)
        if config.sample_models:
            models = [[names[j] for j in torch.randperm(len(names), generator=g)[:count].tolist()]
                      for g in run.generators]
        else:
            models = [names[:count]] * len(x0)
        run.accumulate(mu, x, models)
        x = project(x + s * config.step_in * run.direction(mu), x0, eps)
    return x


@torch.no_grad()
def per_image_losses(detectors: Mapping[str, Detector], images: torch.Tensor | Sequence[torch.Tensor],
                     targets: Mapping[str, list], config: MetaAAFGConfig,
                     seeds: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Each detector's loss on each image (a batch [B, 3, H, W] or a list of [3, H, W])
    separately: {name: float tensor [B] on CPU}.

    A detector whose loss samples (Faster R-CNN) draws from ``seeds[i]`` for image i (None:
    the detector's default seed), so scoring the clean and the augmented image with the same
    seeds compares them under the same draws.
    """
    out = {}
    for name, detector in detectors.items():
        values = []
        for i, image in enumerate(images):
            seed = None if seeds is None else seeds[i]
            with _forward_context(image, config):
                values.append(_loss(detector, image[None], targets[name][i : i + 1], seed).float())
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


def fixed_targets(images: Sequence[torch.Tensor], targets, detectors: Mapping[str, Detector]) -> dict[str, list]:
    """The targets each detector's loss uses for the whole batch.

    ``targets`` is a list of ground-truth dicts (shared by all detectors), ``"pseudo"``
    (each detector's own predictions on the clean images, computed once here) or a
    ready {name: list of dicts} mapping.
    """
    if isinstance(targets, str):
        if targets != "pseudo":
            raise ValueError(f"targets must be ground-truth dicts or 'pseudo', got {targets!r}")
        # In full precision (one forward per model and batch): bf16 boxes would be coarse.
        return {name: d.pseudo_targets([img.detach() for img in images]) for name, d in detectors.items()}
    if isinstance(targets, Mapping):
        return {name: targets[name] for name in detectors}
    return {name: targets for name in detectors}


def image_sizes_and_batch(images: torch.Tensor | Sequence[torch.Tensor]) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """(each image's (H, W), the images zero-padded bottom/right to one fp32 batch)."""
    image_list = list(images.unbind(0)) if isinstance(images, torch.Tensor) and images.dim() == 4 else list(images)
    if isinstance(images, torch.Tensor) and images.dim() != 4 or not image_list:
        raise ValueError(f"expected images [B, 3, H, W] or a list of [3, H, W], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else 'an empty list'}")
    for img in image_list:
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"expected images [3, H, W], got {tuple(img.shape)}")
    sizes = [(int(img.shape[1]), int(img.shape[2])) for img in image_list]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    batch = image_list[0].new_zeros(len(image_list), 3, height, width, dtype=torch.float32)
    for i, (img, (h, w)) in enumerate(zip(image_list, sizes)):
        batch[i, :, :h, :w] = img.detach()
    return sizes, batch


def augment_batch(
    images: torch.Tensor | Sequence[torch.Tensor],
    targets,
    detectors: Mapping[str, Detector] | Sequence[Detector],
    config: MetaAAFGConfig,
    counter: Counter | None = None,
    ids: Sequence[str] | None = None,
    seed: int = 0,
    codec: Reconstruction | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Meta-AAFG on one batch of images.

    Args:
        images: float [B, 3, H, W] in [0, 1] (8-bit values), on the detectors' device, or
            a list of [3, H_i, W_i] of any sizes (see the module docstring).
        targets: list of B ground-truth dicts (``boxes`` xyxy pixels, ``labels``),
            ``"pseudo"``, or {name: list of B dicts}.
        detectors: the model set, {name: Detector} (or a sequence keyed by ``.name``).
        config: :class:`MetaAAFGConfig`.
        counter: optional ``collections.Counter``; ``"gradient_evaluations"`` is increased
            by one per model gradient per image (:func:`gradient_budget` times B per batch).
        ids: the images' ids (default "0".."B-1"); with ``seed`` they seed each image's
            generator (:func:`image_seed`), the source of all its random draws.
        codec: the frozen anchor codec's differentiable reconstruction (``C``; e.g.
            :func:`icm.codec.noisy_reconstruction` bound to a model), or None.

    Returns:
        (augmented images rounded to multiples of 1/255, as a batch [B, 3, H, W] or as a list
        like ``images``; loss before {name: [B]} on x0; loss after {name: [B]} on the
        augmented images), losses per image on CPU.
    """
    sizes, x0 = image_sizes_and_batch(images)
    detectors = as_detector_dict(detectors)
    ids = [str(i) for i in range(len(sizes))] if ids is None else list(ids)
    if len(ids) != len(sizes):
        raise ValueError(f"{len(sizes)} images but {len(ids)} ids")
    generators = [torch.Generator().manual_seed(image_seed(seed, image_id)) for image_id in ids]
    score_seeds = [_draw_seed(g) for g in generators]
    clean = [x0[i, :, :h, :w] for i, (h, w) in enumerate(sizes)]
    targets = fixed_targets(clean, targets, detectors)
    losses_before = per_image_losses(detectors, clean, targets, config, score_seeds)
    run = _Run(detectors, targets, generators, config, codec, counter, sizes)
    x = (_meta_attack if config.meta else _ensemble_pgd)(x0, run)
    augmented = [(torch.round(x[i, :, :h, :w] * 255.0) / 255.0) for i, (h, w) in enumerate(sizes)]
    losses_after = per_image_losses(detectors, augmented, targets, config, score_seeds)
    if isinstance(images, torch.Tensor):
        return torch.stack(augmented), losses_before, losses_after
    return augmented, losses_before, losses_after


def max_linf_8bit(epsilon: float) -> int:
    """The largest 8-bit change an epsilon allows after rounding: round(255 * epsilon)."""
    return int(math.floor(255 * epsilon + 0.5))
