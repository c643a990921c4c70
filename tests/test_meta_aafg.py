"""Meta-AAFG algorithm (icm/aafg/meta_aafg.py) on tiny differentiable fake detectors."""

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import FakeDetector
from torch import nn

from icm.aafg.meta_aafg import (
    MetaAAFGConfig,
    augment_batch,
    gradient_budget,
    max_linf_8bit,
    normalise,
    project,
)
from icm.detectors.base import Detector
from icm.manifest import linf_8bit

CLASSES = ["square", "circle"]


class LinearDetector(Detector):
    """loss = sum(w * x): the input gradient is w, so every step can be computed by hand."""

    name = "linear"

    def __init__(self, weight: torch.Tensor):
        super().__init__(CLASSES)
        self.weight = nn.Parameter(weight)

    def loss_raw(self, images, targets):
        return (torch.stack(images) * self.weight).sum()


class ChannelDetector(Detector):
    """loss = sum over pixels of w[c] * x[c]: the same gradient sign wherever a pixel lands,
    whatever the input size (for resize-and-pad)."""

    name = "channel"

    def __init__(self, weight: torch.Tensor):
        super().__init__(CLASSES)
        self.weight = nn.Parameter(weight)

    def loss_raw(self, images, targets):
        return sum((img * self.weight.view(3, 1, 1)).sum() for img in images)


def fake_set(n: int = 3, log: list | None = None, offset: int = 0) -> dict[str, FakeDetector]:
    return {f"m{i}": FakeDetector(f"m{i}", seed=i + offset, log=log).freeze() for i in range(n)}


def batch(b: int = 2, size: int = 24, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, size, size), generator=gen).float() / 255
    targets = [
        {"boxes": torch.tensor([[2.0, 3.0, 14.0, 16.0]]), "labels": torch.tensor([1])} for _ in range(b)
    ]
    return images, targets


def small_config(**kw) -> MetaAAFGConfig:
    return MetaAAFGConfig(**{"meta_steps": 4, "inner_steps": 2, **kw})


def test_defaults_follow_design():
    cfg = MetaAAFGConfig()
    assert cfg.epsilon == pytest.approx(8 / 255)
    assert (cfg.meta_steps, cfg.inner_steps) == (10, 5)
    assert cfg.step_in == pytest.approx(8 / 255 / 16)
    assert cfg.step_out == pytest.approx(8 / 255 / 10)
    assert cfg.sign == -1.0 and MetaAAFGConfig(direction="harmful").sign == 1.0
    assert gradient_budget(cfg, 3) == 110
    with pytest.raises(ValueError, match="direction"):
        MetaAAFGConfig(direction="sideways")


def test_project_and_normalise():
    x0 = torch.full((1, 3, 2, 2), 0.5)
    x = torch.tensor([0.0, 0.45, 0.6, 1.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    p = project(x, x0, 0.1)
    assert torch.allclose(p[0, 0].flatten(), torch.tensor([0.4, 0.45, 0.6, 0.6]))
    edge = project(torch.full((1, 3, 2, 2), 1.2), torch.full((1, 3, 2, 2), 0.98), 0.1)
    assert edge.max() == 1.0
    g = torch.randn(3, 3, 4, 4) * torch.tensor([1.0, 100.0, 1e-6]).view(3, 1, 1, 1)
    n = normalise(g)
    assert torch.allclose(n.abs().mean(dim=(1, 2, 3)), torch.ones(3), atol=1e-5)
    assert torch.equal(normalise(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize("meta", [True, False])
def test_output_is_8bit_inside_the_ball(meta):
    images, targets = batch()
    cfg = small_config(meta=meta)
    aug, before, after = augment_batch(images, targets, fake_set(), cfg)
    assert aug.shape == images.shape and aug.dtype == torch.float32
    assert torch.equal(aug, torch.round(aug * 255) / 255)
    assert aug.min() >= 0 and aug.max() <= 1
    linf = linf_8bit(aug, images)
    assert linf.max() <= max_linf_8bit(cfg.epsilon) == 8
    assert linf.min() >= 1  # the images did change
    assert set(before) == set(after) == {"m0", "m1", "m2"}
    assert all(v.shape == (2,) and torch.isfinite(v).all() for v in [*before.values(), *after.values()])


@pytest.mark.parametrize("meta", [True, False])
def test_helpful_lowers_and_harmful_raises_every_seen_loss(meta):
    images, targets = batch(b=3)
    models = fake_set()
    _, before, after_help = augment_batch(images, targets, models, small_config(meta=meta))
    _, _, after_harm = augment_batch(images, targets, models, small_config(meta=meta, direction="harmful"))
    for name in models:
        assert after_help[name].mean() < before[name].mean() < after_harm[name].mean(), name


def test_gradient_budget_meta_on_equals_meta_off():
    images, targets = batch(b=1, size=16)
    for n_models, expected in [(3, 4 * (2 * 2 + 1)), (2, 4 * (2 * 1 + 1)), (1, 4 * (2 + 1)), (4, 4 * (2 * 3 + 1))]:
        counts = []
        for meta in (True, False):
            counter = Counter()
            augment_batch(images, targets, fake_set(n_models), small_config(meta=meta), counter=counter)
            counts.append(counter["gradient_evaluations"])
        assert counts == [expected, expected] == [gradient_budget(small_config(), n_models)] * 2


def test_meta_schedule_holds_out_each_model_in_turn():
    log: list[str] = []
    images, targets = batch(b=1, size=16)
    augment_batch(images, targets, fake_set(3, log=log), MetaAAFGConfig(meta_steps=3, inner_steps=1))
    assert log == ["m1", "m2", "m0", "m0", "m2", "m1", "m0", "m1", "m2"]
    log.clear()
    augment_batch(images, targets, fake_set(3, log=log), MetaAAFGConfig(meta_steps=2, inner_steps=1, meta=False))
    # budget 2 * (1 * 2 + 1) = 6 = two full ensemble steps
    assert log == ["m0", "m1", "m2", "m0", "m1", "m2"]


def test_meta_step_keeps_only_the_meta_test_displacement():
    # One model, T = 1, K = 1, loss = sum(w * x): the inner step moves xt by alpha_in, the
    # meta-test step by alpha_out, and x keeps only the latter: x = x0 - alpha_out * sign(w).
    torch.manual_seed(1)
    w = torch.randn(3, 8, 8)
    images = torch.full((1, 3, 8, 8), 128 / 255)
    cfg = MetaAAFGConfig(epsilon=8 / 255, meta_steps=1, inner_steps=1, alpha_in=2 / 255, alpha_out=3 / 255)
    no_boxes = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    aug, before, after = augment_batch(images, no_boxes, {"lin": LinearDetector(w).freeze()}, cfg)
    expected = images - 3 / 255 * w.sign()
    assert torch.allclose(aug, expected, atol=1e-6)
    assert after["lin"] < before["lin"]
    # Meta off: budget 2 steps of alpha_in in the same direction.
    aug_off, _, _ = augment_batch(images, no_boxes, {"lin": LinearDetector(w).freeze()}, MetaAAFGConfig(
        epsilon=8 / 255, meta_steps=1, inner_steps=1, alpha_in=2 / 255, meta=False))
    assert torch.allclose(aug_off, images - 4 / 255 * w.sign(), atol=1e-6)


def _no_boxes(b: int) -> list[dict]:
    return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * b


@pytest.mark.parametrize("meta", [True, False])
@pytest.mark.parametrize("option", [{}, {"sample_models": 2}, {"smooth": 5}, {"delta_scale": 4},
                                    {"diversity": 1.0}, {"epsilon": 4 / 255, "alpha_out": 2 / 255}])
def test_full_budget_where_the_gradients_agree(meta, option):
    # Three models with the same input gradient everywhere: both modes, with every option,
    # must spend the whole epsilon (the meta-test step must not be swallowed by P).
    channel = torch.tensor([1.0, -1.0, 1.0])
    w = channel.view(3, 1, 1).expand(3, 16, 16)
    models = {f"l{i}": ChannelDetector(channel * (i + 1)).freeze() for i in range(3)}
    images = torch.full((2, 3, 16, 16), 100 / 255)
    cfg = MetaAAFGConfig(meta=meta, **option)
    aug, _, _ = augment_batch(images, _no_boxes(2), models, cfg)
    moved = (aug - images) * 255 * -w.sign()
    assert torch.allclose(moved, torch.full_like(moved, max_linf_8bit(cfg.epsilon)), atol=1e-4)


@pytest.mark.parametrize("meta", [True, False])
def test_full_budget_on_a_random_sign_pattern(meta):
    # Per-pixel random signs, identical for the three models: every pixel moves the whole
    # 8 levels against the gradient (the first build's meta on stopped near 5 of 8).
    w = torch.randn(3, 12, 12, generator=torch.Generator().manual_seed(3))
    models = {f"l{i}": LinearDetector(w).freeze() for i in range(3)}
    images = torch.full((1, 3, 12, 12), 128 / 255)
    aug, _, _ = augment_batch(images, _no_boxes(1), models, MetaAAFGConfig(meta=meta))
    assert torch.equal((aug - images).mul(255).round(), -8 * w.sign()[None])


def test_pseudo_targets_are_clean_predictions_computed_once():
    images, _ = batch(b=2)
    models = fake_set(2)
    augment_batch(images, "pseudo", models, small_config())
    assert [m.predict_calls for m in models.values()] == [1, 1]


def test_zero_gradient_model_is_harmless():
    class Constant(Detector):
        name = "constant"

        def loss_raw(self, images, targets):
            return torch.tensor(1.0)

    images, targets = batch(b=1, size=16)
    models = {"c": Constant(CLASSES), **fake_set(1)}
    aug, before, after = augment_batch(images, targets, models, small_config())
    assert before["c"].item() == after["c"].item() == 1.0
    assert after["m0"] < before["m0"]


class Sampling(Detector):
    """A loss that samples, like Faster R-CNN's proposals: it logs the seed of every call."""

    name = "sampling"
    samples_in_loss = True

    def __init__(self, log: list):
        super().__init__(CLASSES)
        self.log = log
        self.weight = nn.Parameter(torch.tensor([1.0, -0.5, 0.25]).view(3, 1, 1))

    def loss_raw(self, images, targets, seed=None):
        self.log.append((torch.is_grad_enabled(), seed))
        noise = torch.randn(3, 1, 1, generator=torch.Generator().manual_seed(seed or 0))
        return sum((img * (self.weight + noise)).sum() + img[:, :4, :4].square().sum() for img in images)


def test_sampling_losses_draw_afresh_at_every_gradient_and_score_with_one_draw():
    log: list = []
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = small_config(meta_steps=3, inner_steps=2)
    counter = Counter()
    augment_batch(images, _no_boxes(2), {"s": Sampling(log).freeze()}, cfg, counter=counter)
    gradient_seeds = [seed for grad, seed in log if grad]
    scoring_seeds = [seed for grad, seed in log if not grad]
    assert len(gradient_seeds) == counter["gradient_evaluations"] == 2 * gradient_budget(cfg, 1)
    assert len(set(gradient_seeds)) == len(gradient_seeds)  # a fresh draw every time
    assert None not in gradient_seeds
    # before: image 0, image 1; after: the same two draws, none of them used for a gradient
    assert scoring_seeds[:2] == scoring_seeds[2:] and len(set(scoring_seeds)) == 2
    assert not set(scoring_seeds) & set(gradient_seeds)


def test_per_image_losses_use_the_given_seeds():
    from icm.aafg.meta_aafg import per_image_losses

    log: list = []
    images, targets = batch(b=3, size=8)
    models = {"s": Sampling(log)}
    first = per_image_losses(models, images, {"s": targets}, small_config(), seeds=[5, 6, 7])["s"]
    again = per_image_losses(models, images, {"s": targets}, small_config(), seeds=[5, 6, 7])["s"]
    other = per_image_losses(models, images, {"s": targets}, small_config(), seeds=[8, 6, 7])["s"]
    assert torch.equal(first, again) and first.shape == (3,)
    assert other[0] != first[0] and torch.equal(other[1:], first[1:])
    assert [seed for _, seed in log[:3]] == [5, 6, 7]


def _run_alone_and_in_batches(cfg, models, codec=None):
    images, targets = batch(b=3, size=20, seed=4)
    ids = ["a", "b", "c"]
    alone = [augment_batch(images[i : i + 1], targets[i : i + 1], models, cfg, ids=[ids[i]], seed=7, codec=codec)[0]
             for i in range(3)]
    together, _, _ = augment_batch(images, targets, models, cfg, ids=ids, seed=7, codec=codec)
    order = [2, 0, 1]
    shuffled, _, _ = augment_batch(images[order], [targets[i] for i in order], models, cfg,
                                   ids=[ids[i] for i in order], seed=7, codec=codec)
    return torch.cat(alone), together, shuffled[[1, 2, 0]]


@pytest.mark.parametrize("option", [{}, {"sample_models": 2}, {"diversity": 0.7}, {"smooth": 3, "delta_scale": 2}])
def test_an_images_result_depends_neither_on_its_batch_mates_nor_on_the_order(option):
    models = {**fake_set(3), "s": Sampling([]).freeze()}
    cfg = small_config(meta_steps=3, inner_steps=2, **option)
    alone, together, shuffled = _run_alone_and_in_batches(cfg, models)
    assert torch.equal(alone, together) and torch.equal(alone, shuffled)
    # ... and on the seed and id: another seed gives another perturbation where draws matter
    if option.get("sample_models") or option.get("diversity"):
        images, targets = batch(b=1, size=20, seed=4)
        other, _, _ = augment_batch(images, targets, models, cfg, ids=["a"], seed=8)
        assert not torch.equal(other, alone[:1])


def test_sample_models_draws_a_subset_per_meta_iteration_with_the_same_budget():
    log: list[str] = []
    models = fake_set(4, log=log)
    images, targets = batch(b=1, size=16)
    for meta in (True, False):
        log.clear()
        counter = Counter()
        cfg = MetaAAFGConfig(meta_steps=6, inner_steps=2, sample_models=3, meta=meta)
        augment_batch(images, targets, models, cfg, counter=counter)
        assert counter["gradient_evaluations"] == len(log) == gradient_budget(cfg, 4) == 6 * (2 * 2 + 1)
        assert len(set(log)) == 4  # over six draws every model was used
    log.clear()
    augment_batch(images, targets, models, MetaAAFGConfig(meta_steps=6, inner_steps=2, sample_models=3))
    for t in range(6):
        iteration = log[5 * t : 5 * t + 5]  # two inner steps of two models, then the held-out one
        assert iteration[:2] == iteration[2:4] and len(set(iteration)) == 3
        assert iteration[4] not in iteration[:4]


def test_diverse_input_scales_pads_and_moves_the_boxes():
    from icm.aafg.meta_aafg import DIVERSITY_MAX_SCALE, diverse_input

    x = torch.zeros(3, 40, 60)
    x[:, 10:30, 20:50] = 1.0  # a box (20, 10, 50, 30) in xyxy pixels
    target = {"boxes": torch.tensor([[20.0, 10.0, 50.0, 30.0]]), "labels": torch.tensor([1])}
    gen = torch.Generator().manual_seed(0)
    assert diverse_input(x, target, gen, 0.0)[0] is x
    for _ in range(20):
        out, moved = diverse_input(x, target, gen, 1.0)
        assert out.shape == (3, round(40 * DIVERSITY_MAX_SCALE), round(60 * DIVERSITY_MAX_SCALE))
        ys, xs = torch.nonzero(out[0] > 0, as_tuple=True)
        found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(moved["boxes"][0], found, atol=1.0)  # the box follows the content
        assert torch.equal(moved["labels"], target["labels"])
        scale = (moved["boxes"][0, 2] - moved["boxes"][0, 0]) / 30
        assert 1.0 - 1e-6 <= scale < DIVERSITY_MAX_SCALE + 0.05
    used = sum(diverse_input(x, target, gen, 0.7)[0] is not x for _ in range(400))
    assert 0.6 < used / 400 < 0.8


def test_smoothing_kernel_and_delta_scale_shapes():
    from icm.aafg.meta_aafg import gaussian_kernel, pool_gradient, smooth_gradient, step_direction

    k = gaussian_kernel(15)
    assert k.shape == (15, 15) and k.sum() == pytest.approx(1.0) and k.argmax() == 7 * 15 + 7
    sigma = (15 - 1) / 6  # MGAA's gkern(15, 3)
    assert (k[7, 8] / k[7, 7]).item() == pytest.approx(math.exp(-0.5 / sigma**2), rel=1e-5)
    impulse = torch.zeros(1, 3, 31, 31)
    impulse[0, :, 15, 15] = 1.0
    assert torch.allclose(smooth_gradient(impulse, 15)[0, 1, 8:23, 8:23], k, atol=1e-7)
    g = torch.randn(2, 3, 30, 30)
    low = pool_gradient(g, 4)
    assert low.shape == (2, 3, 8, 8)  # ceil(30 / 4)
    assert low[0, 0, 0, 0].item() == pytest.approx(g[0, 0, :4, :4].mean().item(), rel=1e-5)
    up = step_direction(low, (30, 30))
    assert up.shape == (2, 3, 30, 30) and up.abs().max() <= 1.0


def test_delta_scale_makes_the_perturbation_coarse():
    w = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    models = {"l": LinearDetector(w).freeze()}
    images = torch.full((1, 3, 32, 32), 128 / 255)

    def roughness(scale):
        aug, _, _ = augment_batch(images, _no_boxes(1), models, MetaAAFGConfig(delta_scale=scale))
        delta = ((aug - images) * 255).round()
        return (delta[..., 1:] - delta[..., :-1]).abs().mean().item(), delta.abs().max().item()

    fine, fine_max = roughness(1)
    coarse, coarse_max = roughness(4)
    assert fine_max == coarse_max == 8
    assert coarse < fine / 3  # neighbours move together at S = 4


def test_codec_aware_gradients_go_through_the_codec():
    from compressai.models import ScaleHyperprior

    from icm.codec import noisy_reconstruction

    torch.manual_seed(0)
    codec = ScaleHyperprior(N=8, M=12).eval()
    for p in codec.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 3, 20, 20, requires_grad=True)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        a = noisy_reconstruction(codec, x)
        torch.manual_seed(1)
        b = noisy_reconstruction(codec, x)
        torch.manual_seed(2)
        c = noisy_reconstruction(codec, x)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not codec.training  # the model's mode is restored
    (grad,) = torch.autograd.grad(a.sum(), x)
    assert grad.abs().sum() > 0

    calls = []

    def reconstruction(xi):
        calls.append(xi.shape)
        return noisy_reconstruction(codec, xi)

    cfg = small_config(meta_steps=2, inner_steps=1)
    counter = Counter()
    alone, together, shuffled = _run_alone_and_in_batches(cfg, fake_set(2), codec=reconstruction)
    assert torch.equal(alone, together) and torch.equal(alone, shuffled)
    images, targets = batch(b=2, size=20)
    calls.clear()
    with_codec, _, _ = augment_batch(images, targets, fake_set(2), cfg, counter=counter, codec=reconstruction)
    plain, _, _ = augment_batch(images, targets, fake_set(2), cfg)
    assert len(calls) == counter["gradient_evaluations"] == 2 * gradient_budget(cfg, 2)
    assert not torch.equal(with_codec, plain)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        augment_batch(torch.zeros(3, 8, 8), "pseudo", fake_set(1), small_config())
    with pytest.raises(ValueError, match="empty"):
        augment_batch(torch.zeros(1, 3, 8, 8), "pseudo", {}, small_config())


def test_meta_transfers_to_an_unseen_fake_detector():
    # Not a claim about real detectors (benchmarks/meta_transfer.py measures that): only that
    # the perturbation is not specific to the seen fakes and helps a fresh one too.
    images, targets = batch(b=4, size=24, seed=3)
    unseen = FakeDetector("unseen", seed=99).freeze()
    aug, _, _ = augment_batch(images, targets, fake_set(3), MetaAAFGConfig(meta_steps=6, inner_steps=2))
    with torch.no_grad():
        assert unseen.loss(aug, targets) < unseen.loss(images, targets)


# ----------------------------------------------------------------------------- real detectors


def test_with_a_real_small_detector_random_weights():
    from icm.data import TOY_CLASSES
    from icm.detectors import build_detector

    detector = build_detector("toy_centernet", classes=TOY_CLASSES, num_classes=len(TOY_CLASSES), weights=None)
    images, _ = batch(b=1, size=64)
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
    cfg = MetaAAFGConfig(meta_steps=2, inner_steps=1)
    counter = Counter()
    aug, before, after = augment_batch(images, targets, {"c": detector}, cfg, counter=counter)
    assert counter["gradient_evaluations"] == gradient_budget(cfg, 1) == 4
    assert aug.shape == images.shape and 1 <= linf_8bit(aug, images).max() <= 8
    _, _, after_harmful = augment_batch(images, targets, {"c": detector}, MetaAAFGConfig(
        meta_steps=2, inner_steps=1, direction="harmful"))
    assert after["c"] < before["c"] < after_harmful["c"]


def _toy_model_set():
    """The toy config's seen models with their trained weights, or None when not built yet."""
    from icm.config import CONFIG_DIR, load_yaml

    path = CONFIG_DIR / "toy.yaml"
    if not path.is_file():
        return None
    data = load_yaml(path)
    section = data.get("meta_aafg") or {}
    models = section.get("models", data.get("models"))
    weights = section.get("weights", data.get("weights")) or {}
    if isinstance(weights, list):
        weights = dict(str(w).split("=", 1) for w in weights)
    if isinstance(models, str):
        models = models.split(",")
    if not models or not all(name in weights and Path(weights[name]).is_file() for name in models):
        return None
    return models, weights


@pytest.mark.slow
def test_trained_toy_detectors_helpful_lowers_and_harmful_raises_every_loss():
    from icm.data import load_dataset
    from icm.detectors import build_detector
    from icm.io import read_image_tensor

    model_set = _toy_model_set()
    if model_set is None:
        pytest.skip("no trained toy model set in configs/toy.yaml yet")
    models, weights = model_set
    dataset = load_dataset("toy", split="val")
    detectors = {n: build_detector(n, classes=dataset.classes, weights=weights[n]) for n in models}
    samples = dataset.samples[:4]
    images = torch.stack([read_image_tensor(s.image_path) for s in samples])
    targets = [{"boxes": torch.as_tensor(s.boxes), "labels": torch.as_tensor(s.labels)} for s in samples]
    cfg = dict(meta_steps=5, inner_steps=2)
    torch.manual_seed(0)
    _, before, helpful = augment_batch(images, targets, detectors, MetaAAFGConfig(**cfg))
    torch.manual_seed(0)
    _, _, harmful = augment_batch(images, targets, detectors, MetaAAFGConfig(**cfg, direction="harmful"))
    for name in models:
        assert helpful[name].mean() < before[name].mean() < harmful[name].mean(), name


@pytest.mark.parametrize("option", [{}, {"meta": False}, {"sample_models": 2}, {"diversity": 0.7},
                                    {"smooth": 3, "delta_scale": 3}])
def test_a_batch_of_mixed_sizes_gives_each_image_its_batch_1_result(option):
    models = {**fake_set(3), "s": Sampling([]).freeze()}
    cfg = small_config(meta_steps=3, inner_steps=2, **option)
    gen = torch.Generator().manual_seed(3)
    sizes = [(20, 26), (25, 17), (20, 26), (16, 16)]
    images = [torch.randint(0, 256, (3, h, w), generator=gen).float() / 255 for h, w in sizes]
    targets = [{"boxes": torch.tensor([[2.0, 3.0, 14.0, 15.0]]), "labels": torch.tensor([1])} for _ in sizes]
    ids = ["a", "b", "c", "d"]
    together, before, after = augment_batch(images, targets, models, cfg, ids=ids, seed=7)
    assert isinstance(together, list) and [tuple(a.shape[1:]) for a in together] == sizes
    assert before["m0"].shape == after["m0"].shape == (4,)
    for i in range(4):
        alone, alone_before, alone_after = augment_batch(images[i][None], targets[i : i + 1], models, cfg,
                                                         ids=[ids[i]], seed=7)
        assert torch.equal(together[i], alone[0])
        assert torch.allclose(before["m0"][i], alone_before["m0"][0]) and torch.allclose(after["m0"][i], alone_after["m0"][0])
        delta = ((together[i] - images[i]) * 255).round().abs()
        assert 0 < delta.max() <= 8 and torch.equal(together[i] * 255, (together[i] * 255).round())


def test_image_sizes_and_batch_pads_bottom_right_and_rejects_bad_shapes():
    from icm.aafg.meta_aafg import image_sizes_and_batch

    sizes, padded = image_sizes_and_batch([torch.ones(3, 4, 6), torch.full((3, 5, 2), 0.5)])
    assert sizes == [(4, 6), (5, 2)] and padded.shape == (2, 3, 5, 6)
    assert padded[0, :, 4:].abs().sum() == 0 and padded[0, :, :4].min() == 1
    assert padded[1, :, :, 2:].abs().sum() == 0 and padded[1, :, :, :2].min() == 0.5
    for bad in ([torch.ones(1, 4, 4)], [], torch.ones(3, 4, 4)):
        with pytest.raises(ValueError, match="expected images"):
            image_sizes_and_batch(bad)
