"""Upstream pretraining of a detector's backbone on the toy world's classification task.

Zoo detectors do not start from random weights: their backbones come from a shared
upstream pretraining (ImageNet). The toy world's ImageNet is
:func:`icm.data.toy.render_toy_classification`: one large shape on a textured background,
labelled with its shape, its colour and the background's kind, a task that no evaluation
uses. A detector's body (its backbone without neck or heads, fed exactly as the detector
feeds it) is trained on it with a linear head per label; the body's weights are then saved
under the detector's own state-dict keys and loaded into a freshly built detector before
detection training (``scripts/train_detector.py --init_backbone``).

Bodies per family (:func:`body_prefixes`): ultralytics, the layers of the model yaml's
``backbone`` section; torchvision, ``backbone.body`` (``backbone.features`` for SSD);
CenterNet, ``conv1`` .. ``layer4``.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from icm.detectors.base import Detector
from icm.io import atomic_torch_save

BACKBONE_FORMAT = "icm-backbone"
RESNET_BODY = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def body_prefixes(detector: Detector) -> list[str]:
    """The detector's state-dict key prefixes that make up its body."""
    if detector.family == "ultralytics":
        depth = len(detector.model.yaml["backbone"])
        return [f"model.model.{i}." for i in range(depth)]
    if detector.family == "torchvision":
        backbone = detector.model.backbone
        return ["model.backbone.features."] if hasattr(backbone, "features") else ["model.backbone.body."]
    if detector.family == "centernet":
        return [f"model.{m}." for m in RESNET_BODY if m not in ("relu", "maxpool")]  # no parameters
    raise ValueError(f"{detector.name}: no backbone pretraining for the {detector.family!r} family")


class Body(nn.Module):
    """The detector's body as a feature extractor: RGB [0, 1] -> its last feature map,
    with the detector's own input normalisation. Shares the detector's modules."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.family = detector.family
        body_prefixes(detector)  # an unsupported family fails here
        if self.family == "ultralytics":
            depth = len(detector.model.yaml["backbone"])
            self.layers = nn.ModuleList(detector.model.model[:depth])
        elif self.family == "torchvision":
            model = detector.model
            self.register_buffer("mean", torch.tensor(model.transform.image_mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(model.transform.image_std).view(1, 3, 1, 1), persistent=False)
            backbone = model.backbone
            self.layers = nn.ModuleList(backbone.features if hasattr(backbone, "features") else [backbone.body])
        else:
            net = detector.model
            self.detector = [detector]  # a list: not a submodule (its preprocess only)
            # The ResNet body's modules in forward order (icm.detectors.backbones.resnet18_body).
            self.layers = nn.ModuleList(getattr(net, name) for name in RESNET_BODY)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.family == "torchvision":
            x = (x - self.mean) / self.std
        elif self.family == "centernet":
            x = self.detector[0].preprocess(list(x))[0]
        for layer in self.layers:
            x = layer(x)
            if isinstance(x, dict):  # torchvision's IntermediateLayerGetter
                x = list(x.values())[-1]
        return x


class BodyClassifier(nn.Module):
    """Body + global average pooling + one linear head per label group."""

    def __init__(self, body: Body, channels: int, num_labels: tuple[int, ...]) -> None:
        super().__init__()
        self.body = body
        self.heads = nn.ModuleList(nn.Linear(channels, n) for n in num_labels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(x).mean(dim=(2, 3))
        return [head(features) for head in self.heads]


def pretrain_body(
    detector: Detector,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
    log_every: int = 50,
) -> dict:
    """Train the detector's body on (images uint8 [N, 3, H, W], labels [N, G]) in place.

    AdamW with linear warm-up (5%) and cosine decay; random flips and crops (pad 8, reflect)
    on each batch. Returns a summary: steps, seconds, the last logged loss and accuracies on
    the last 10% of the images (held out from training).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    num_labels = tuple(int(labels[:, g].max()) + 1 for g in range(labels.shape[1]))
    held_out = max(1, len(images) // 10)
    train_x, train_y = images[:-held_out], labels[:-held_out]
    body = Body(detector)
    detector.set_trainable(True)
    with torch.no_grad():
        channels = body(images[:2].float() / 255).shape[1]
    model = BodyClassifier(body, channels, num_labels).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)
                                                  * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    started, window = time.perf_counter(), []
    for step in range(1, steps + 1):
        index = torch.randint(0, len(train_x), (batch_size,), generator=generator)
        x = _augment(train_x[index].float() / 255, generator)
        logits = model(x)
        loss = sum(F.cross_entropy(out, train_y[index, g]) for g, out in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        window.append(loss.item())
        if log is not None and (step % log_every == 0 or step == steps):
            log({"step": step, "loss": sum(window) / len(window), "seconds": round(time.perf_counter() - started, 1)})
            window = []
    accuracy = held_out_accuracy(model, images[-held_out:], labels[-held_out:])
    detector.freeze()
    return {"steps": steps, "seconds": round(time.perf_counter() - started, 1), "batch_size": batch_size,
            "lr": lr, "train_images": len(train_x), "held_out_images": held_out, "held_out_accuracy": accuracy}


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and random crops after an 8-pixel reflect padding."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (8, 8, 8, 8), mode="reflect")
    top, left = (int(v) for v in torch.randint(0, 17, (2,), generator=generator))
    return padded[..., top : top + x.shape[-2], left : left + x.shape[-1]]


@torch.no_grad()
def held_out_accuracy(model: BodyClassifier, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Accuracy of each label group on ``images`` (eval mode)."""
    model.eval()
    correct = torch.zeros(labels.shape[1])
    for start in range(0, len(images), 64):
        logits = model(images[start : start + 64].float() / 255)
        for g, out in enumerate(logits):
            correct[g] += (out.argmax(1) == labels[start : start + 64, g]).sum()
    model.train()
    return (correct / len(images)).tolist()


def save_body(path: str | os.PathLike, detector: Detector, card: dict) -> None:
    """The body's weights under the detector's state-dict keys, with a card (weights_only)."""
    prefixes = tuple(body_prefixes(detector))
    state = {k: v.detach().cpu().clone() for k, v in detector.state_dict().items() if k.startswith(prefixes)}
    atomic_torch_save(path, {"format": BACKBONE_FORMAT, "detector": detector.name, "state_dict": state, "card": card})


def load_body(path: str | os.PathLike, detector: Detector) -> dict:
    """Load a :func:`save_body` file into ``detector``; every body key must be there with
    its shape. Returns the file's card."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: not a readable backbone file ({str(e).splitlines()[0]})") from e
    if not isinstance(saved, dict) or saved.get("format") != BACKBONE_FORMAT:
        raise ValueError(f"{path}: not a pretrained backbone (format {BACKBONE_FORMAT!r})")
    own = detector.state_dict()
    prefixes = tuple(body_prefixes(detector))
    wanted = {k for k in own if k.startswith(prefixes)}
    state = saved["state_dict"]
    missing = sorted(wanted - set(state))
    misfit = sorted(k for k in state if k not in own or own[k].shape != state[k].shape)
    if missing or misfit:
        raise ValueError(f"{path}: does not fit {detector.name}'s body (missing {missing[:3]}, misfit {misfit[:3]})")
    detector.load_state_dict(state, strict=False)
    return saved.get("card", {})
