"""The one interface every detector family implements."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
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


class LabelMap:
    """Translate labels between a detector's native classes and a dataset's classes by name
    (through :func:`icm.data.classmaps.class_map`); a class with no counterpart maps to -1."""

    def __init__(self, native_classes: Sequence[str], classes: Sequence[str]) -> None:
        self.native_classes = list(native_classes)
        self.classes = list(classes)
        if self.native_classes == self.classes:
            identity = torch.arange(len(self.classes))
            self.native_to_dataset, self.dataset_to_native = identity, identity.clone()
        else:
            from icm.data.classmaps import class_map

            self.native_to_dataset = torch.as_tensor(class_map(self.native_classes, self.classes), dtype=torch.long)
            self.dataset_to_native = torch.as_tensor(class_map(self.classes, self.native_classes), dtype=torch.long)
        self._on_device: dict[tuple[str, str], torch.Tensor] = {}

    def table_on(self, name: str, device: torch.device | str) -> torch.Tensor:
        """The table ``native_to_dataset`` or ``dataset_to_native`` on ``device``, copied there
        once (a host-to-device copy at every loss would stall a GPU's stream)."""
        key = (name, str(device))
        if key not in self._on_device:
            self._on_device[key] = getattr(self, name).to(device)
        return self._on_device[key]

    def _lookup(self, name: str, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` through table ``name``: -1 where there is no counterpart (or the label is
        out of range); no host synchronisation."""
        table = self.table_on(name, labels.device)
        labels = labels.long()
        if not len(table):
            return torch.full_like(labels, -1)
        valid = (labels >= 0) & (labels < len(table))
        return torch.where(valid, table[labels.clamp(0, len(table) - 1)], -1)

    def to_dataset(self, native_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Native labels -> (dataset labels of the kept entries, keep mask)."""
        mapped = self._lookup("native_to_dataset", native_labels)
        keep = mapped >= 0
        return mapped[keep], keep

    def to_native(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dataset labels -> (native labels of the kept entries, keep mask)."""
        mapped = self._lookup("dataset_to_native", labels)
        keep = mapped >= 0
        return mapped[keep], keep

    def native_or_missing(self, labels: torch.Tensor) -> torch.Tensor:
        """Dataset labels -> native labels, -1 where a class has no native counterpart; the
        same length, so a loss can weight the missing ones out without boolean indexing."""
        return self._lookup("dataset_to_native", labels)


def resolve_classes(
    classes: Sequence[str] | None,
    num_classes: int | None,
    default_native: Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    """(native classes, dataset classes) of a detector being built.

    With ``num_classes`` the head has its own ``num_classes`` classes, named by ``classes``
    (or ``class_0`` ...); without it the head keeps ``default_native`` (COCO for zoo
    architectures) and ``classes`` (default: the native ones) is what predictions report.
    """
    if num_classes is not None:
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"num_classes={num_classes} but {len(classes)} class names given")
        native = list(classes) if classes is not None else [f"class_{i}" for i in range(num_classes)]
        return native, native
    if default_native is None:
        if classes is None:
            raise ValueError("this detector has no default class set: pass classes or num_classes")
        return list(classes), list(classes)
    return list(default_native), list(classes) if classes is not None else list(default_native)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put ``module`` in eval mode (for inference while it is being trained)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


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
    # Whether the loss draws at random (Faster R-CNN's RPN and RoI samplers): such a loss
    # takes a ``seed`` so that a caller can make every evaluation a fresh, reproducible draw.
    samples_in_loss: bool = False

    def __init__(
        self,
        classes: list[str],
        pseudo_threshold: float = 0.3,
        native_classes: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.pseudo_threshold = pseudo_threshold
        # What a checkpoint needs to rebuild this detector (see icm.detectors.weights).
        self.build_kwargs: dict = {}
        self.set_classes(classes, native_classes)

    def set_classes(self, classes: list[str], native_classes: list[str] | None = None) -> None:
        """Set the dataset classes predictions are reported in (and, optionally, the native
        classes of the network's head, by default unchanged or equal to ``classes``)."""
        if native_classes is None:
            native_classes = getattr(self, "native_classes", None) or classes
        self.native_classes = list(native_classes)
        self.classes = list(classes)
        self.label_map = LabelMap(self.native_classes, self.classes)

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

    def canvas(self, height: int, width: int) -> tuple:
        """The input canvas this detector puts an image of ``height`` x ``width`` on in a batch
        of such images. Images with equal canvases share a forward pass without changing each
        other's result; the default (the size itself) batches only equal sizes."""
        return (height, width)

    @torch.no_grad()
    def predict(self, images: Images) -> list[dict[str, torch.Tensor]]:
        """Detections per image: ``boxes`` [N, 4] xyxy pixels of the input image,
        ``scores`` [N] in [0, 1], ``labels`` [N] dataset class indices."""
        return self.predict_raw(as_image_list(images))

    def loss(self, images: Images, targets: Targets, seed: int | None = None) -> torch.Tensor:
        """Scalar detection loss, differentiable with respect to ``images``.

        ``seed``: where :attr:`samples_in_loss`, the loss's random draws come from this seed
        (None: the detector's own default); ignored by deterministic losses.
        """
        image_list = as_image_list(images)
        if isinstance(targets, str):
            if targets != "pseudo":
                raise ValueError(f"targets must be a list of dicts or 'pseudo', got {targets!r}")
            targets = self.pseudo_targets(image_list)
        if len(targets) != len(image_list):
            raise ValueError(f"{len(image_list)} images but {len(targets)} targets")
        if seed is not None and self.samples_in_loss:
            return self.loss_raw(image_list, targets, seed=seed)
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
