"""Meta-AAFG algorithm (MetaAAFG/meta_aafg.py) on tiny differentiable fake detectors."""

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from icm.detectors.base import Detector
from MetaAAFG.meta_aafg import (
    MetaAAFGConfig,
    augment_batch,
    gradient_budget,
    linf_8bit,
    max_linf_8bit,
    normalise,
    project,
)

CLASSES = ["square", "circle"]


class FakeDetector(Detector):
    """A small frozen conv net whose loss is the BCE between its per-pixel objectness and the
    target boxes' mask: differentiable in the pixels, and different seeds give different models."""

    family = "fake"

    def __init__(self, name: str = "fake", seed: int = 0, classes=CLASSES, log: list | None = None):
        super().__init__(classes)
        self.name = name
        self.log = log
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 1, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.predict_calls = 0

    def objectness(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))[:, 0]

    def loss_raw(self, images, targets):
        if self.log is not None and torch.is_grad_enabled():
            self.log.append(self.name)
        x = torch.stack(images)
        mask = torch.zeros(x.shape[0], x.shape[2], x.shape[3])
        for i, t in enumerate(targets):
            for x1, y1, x2, y2 in t["boxes"].round().long().tolist():
                mask[i, y1:y2, x1:x2] = 1.0
        return nn.functional.binary_cross_entropy_with_logits(self.objectness(x), mask.to(x))

    def predict_raw(self, images):
        self.predict_calls += 1
        out = []
        for img in images:
            heat = torch.sigmoid(self.objectness(img[None]))[0]
            h, w = heat.shape
            out.append({
                "boxes": torch.tensor([[0.0, 0.0, w / 2, h / 2]]),
                "scores": heat.mean().reshape(1),
                "labels": torch.zeros(1, dtype=torch.int64),
            })
        return out


class LinearDetector(Detector):
    """loss = sum(w * x): the input gradient is w, so every step can be computed by hand."""

    name = "linear"

    def __init__(self, weight: torch.Tensor):
        super().__init__(CLASSES)
        self.weight = nn.Parameter(weight)

    def loss_raw(self, images, targets):
        return (torch.stack(images) * self.weight).sum()


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


def test_steps_stop_at_epsilon():
    # eps 4, alpha_in 0.25, alpha_out 2 (8-bit units): x moves 2, then 1.5 (the meta-test step
    # starts 2.5 away and is clipped at 4), then 0 once xt starts on the boundary: 3.5 in all.
    w = torch.randn(3, 8, 8)
    images = torch.full((2, 3, 8, 8), 100 / 255)
    cfg = MetaAAFGConfig(epsilon=4 / 255, meta_steps=10, inner_steps=2, alpha_out=2 / 255)
    no_boxes = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    aug, _, _ = augment_batch(images, no_boxes, [LinearDetector(w).freeze()], cfg)
    moved = (aug - images) * 255 * -w.sign()  # displacement along the descent direction
    assert torch.all((moved > 2.9) & (moved < 4.1))


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


def test_per_image_losses_use_the_same_random_draws_before_and_after():
    from MetaAAFG.meta_aafg import per_image_losses

    class Sampling(Detector):  # a loss that samples, like Faster R-CNN's proposals
        name = "sampling"

        def loss_raw(self, images, targets):
            return torch.stack(images).mean() + torch.rand(())

    images, targets = batch(b=3, size=8)
    models = {"s": Sampling(CLASSES)}
    state = torch.get_rng_state()
    first = per_image_losses(models, images, {"s": targets}, small_config())["s"]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    again = per_image_losses(models, images, {"s": targets}, small_config())["s"]
    assert torch.equal(first, again) and first.shape == (3,) and len(set(first.tolist())) == 3


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
