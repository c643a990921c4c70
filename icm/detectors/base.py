"""The one interface every detector family implements."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

# Images: a list of float RGB tensors [3, H, W] in [0, 1] (sizes may differ) or a batch
# [B, 3, H, W]. Targets: one dict per image with "boxes" [N, 4] (xyxy, pixels of that
# image) and "labels" [N] (dataset class indices), or "pseudo" for the detector's own
# clean predictions above ``pseudo_threshold``.
Images = list[torch.Tensor] | torch.Tensor
Targets = list[dict[str, torch.Tensor]] | Literal["pseudo"]


def as_image_list(images: Images) -> list[torch.Tensor]:
    """A batch tensor or a list of images -> list of [3, H, W] tensors (no copy)."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            return [images]
        if images.dim() != 4:
            raise ValueError(f"expected [B, 3, H, W] or [3, H, W], got {tuple(images.shape)}")
        return list(images.unbind(0))
    return list(images)


class Detector(nn.Module):
    """A frozen detector that predicts in the dataset's class space and gives a loss that
    is differentiable with respect to the input pixels.

    Subclasses implement :meth:`predict_raw` (list of predictions) and :meth:`loss_raw`
    (scalar loss from ground-truth dicts). Resizing, letterboxing and normalisation happen
    inside, in torch, so gradients reach the pixels. Once built, parameters are frozen and
    the module stays in eval mode (BatchNorm uses running statistics), whatever ``train()``
    is called with; :meth:`set_trainable` is how the detector trainer unfreezes it.
    """

    name: str = "detector"
    family: str = "base"

    def __init__(self, classes: list[str], pseudo_threshold: float = 0.3) -> None:
        super().__init__()
        self.classes = list(classes)
        self.pseudo_threshold = pseudo_threshold

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    _trainable: bool = False

    def freeze(self) -> Detector:
        """Freeze parameters and keep the module in eval mode (the default for use)."""
        return self.set_trainable(False)

    def set_trainable(self, trainable: bool) -> Detector:
        """Unfreeze for training (``scripts/train_detector.py``) or freeze again."""
        self._trainable = trainable
        for p in self.parameters():
            p.requires_grad_(trainable)
        return super().train(trainable)

    def train(self, mode: bool = True) -> Detector:
        """Train mode only while :meth:`set_trainable` is on; a frozen detector stays in eval."""
        return super().train(mode and self._trainable)

    @torch.no_grad()
    def predict(self, images: Images) -> list[dict[str, torch.Tensor]]:
        """Detections per image: ``boxes`` [N, 4] xyxy pixels of the input image,
        ``scores`` [N] in [0, 1], ``labels`` [N] dataset class indices."""
        return self.predict_raw(as_image_list(images))

    def loss(self, images: Images, targets: Targets) -> torch.Tensor:
        """Scalar detection loss, differentiable with respect to ``images``."""
        image_list = as_image_list(images)
        if isinstance(targets, str):
            if targets != "pseudo":
                raise ValueError(f"targets must be a list of dicts or 'pseudo', got {targets!r}")
            targets = self.pseudo_targets(image_list)
        if len(targets) != len(image_list):
            raise ValueError(f"{len(image_list)} images but {len(targets)} targets")
        return self.loss_raw(image_list, targets)

    @torch.no_grad()
    def pseudo_targets(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The detector's own clean predictions above ``pseudo_threshold``, as targets."""
        preds = self.predict_raw([img.detach() for img in images])
        out = []
        for p in preds:
            keep = p["scores"] >= self.pseudo_threshold
            out.append({"boxes": p["boxes"][keep], "labels": p["labels"][keep]})
        return out

    def predict_raw(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def loss_raw(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        raise NotImplementedError
