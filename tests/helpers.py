"""Helpers shared by several test modules (tiny images, stage-one folders, small detectors)."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from icm.data.records import DetectionDataset, DetectionSample
from icm.detectors.base import Detector
from icm.io import write_image

FAKE_CLASSES = ["square", "circle"]


def toy_image(index: int, height: int = 80, width: int = 72) -> torch.Tensor:
    """A smooth colour gradient with mild noise (8-bit exact after rounding)."""
    generator = torch.Generator().manual_seed(index)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    phase = index / 7
    x = torch.stack([yy, xx, (yy + xx + phase) % 1]) * 0.6 + 0.2 * torch.rand(3, height, width, generator=generator)
    return (x.clamp(0, 1) * 255).round() / 255


def colour_shift(x: torch.Tensor) -> torch.Tensor:
    """The toy 'augmentation': red up, blue down (learnable by a codec's decoder)."""
    shift = torch.tensor([0.15, 0.0, -0.15]).view(3, 1, 1)
    return ((x + shift).clamp(0, 1) * 255).round() / 255


def truncate(path: Path) -> Path:
    """Cut an image file to half its bytes (a download or copy that stopped early)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_toy_stage_one(root: Path, count: int = 8, size: tuple[int, int] = (80, 72),
                        augment=colour_shift, relative_sources: bool = False) -> Path:
    """A stage-one output folder: originals in root/originals, images/<id>.png + manifest."""
    out = root / "augmented_data"
    (out / "images").mkdir(parents=True)
    originals = root / "originals"
    originals.mkdir()
    lines = []
    for i in range(count):
        x = toy_image(i, *size)
        write_image(originals / f"img{i}.png", x)
        write_image(out / "images" / f"img{i}.png", augment(x))
        source = f"../originals/img{i}.png" if relative_sources else str(originals / f"img{i}.png")
        lines.append({"id": f"img{i}", "source": source, "output": f"images/img{i}.png", "linf": 0.15})
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return out


def write_images(tmp_path, sizes, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        ramp = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 40, h)[:, None, None]
        arr = np.clip(ramp + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


class SquareFinder(Detector):
    """A tiny real detector: the bounding box of bright pixels, scored by their brightness."""

    name = family = "square_finder"

    def __init__(self, classes, threshold=0.6):
        super().__init__(classes)
        self.threshold = threshold

    def predict_raw(self, images):
        out = []
        for img in images:
            mask = img.mean(0) > self.threshold
            if not mask.any():
                out.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)})
                continue
            ys, xs = torch.nonzero(mask, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            out.append({"boxes": box, "scores": img.mean(0)[mask].mean().reshape(1), "labels": torch.zeros(1, dtype=torch.long)})
        return out


def square_dataset(tmp_path, n=4, size=64):
    rng = np.random.default_rng(1)
    samples = []
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 60).astype(np.uint8)
        x0, y0 = int(rng.integers(4, 30)), int(rng.integers(4, 30))
        arr[y0 : y0 + 24, x0 : x0 + 20] = 240
        path = tmp_path / f"sq{i}.png"
        Image.fromarray(arr).save(path)
        samples.append(DetectionSample(str(i), path, size, size, [[x0, y0, x0 + 20, y0 + 24]], [0]))
    return DetectionDataset("squares", ["square"], samples)


class FakeDetector(Detector):
    """A small frozen conv net whose loss is the BCE between its per-pixel objectness and the
    target boxes' mask: differentiable in the pixels, and different seeds give different models."""

    family = "fake"

    def __init__(self, name: str = "fake", seed: int = 0, classes=FAKE_CLASSES, log: list | None = None):
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
        if len({tuple(img.shape) for img in images}) > 1:  # sizes differ: the mean of per-image losses
            return sum(self._bce([img], [t]) for img, t in zip(images, targets)) / len(images)
        return self._bce(images, targets)

    def _bce(self, images, targets):
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
