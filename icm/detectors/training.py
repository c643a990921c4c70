"""Training any registered detector on a detection dataset (``scripts/train_detector.py``).

The loop only uses the :class:`~icm.detectors.base.Detector` interface: ``set_trainable(True)``,
``loss(images, targets)`` to train, ``predict(images)`` in eval mode to validate
(VOC all-point mAP@0.5 through :func:`icm.voc_eval.voc_map`). Optimiser AdamW or SGD
(per-family default), linear warm-up then cosine decay, gradient clipping, random
horizontal flips. The data order and flips of epoch ``e`` come from a generator seeded with
``(seed, e)``, so a resumed run sees the same batches as an uninterrupted one.

Files in the output folder, the layout of stage two's trainer: ``last.pt`` (a detector
checkpoint in fp32 with everything ``--resume`` needs: optimiser, scheduler, step, RNG,
settings; it loads with ``weights_only=True`` and, like any of our checkpoints, through
:func:`icm.detectors.load_detector`), ``best.pt`` (fp16 weights and card only, what is
shipped), ``log.jsonl`` (one JSON line per logged step and per validation). A resumed run
keeps its settings by the rule of :func:`icm.config.keep_run_settings`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from icm.config import git_commit, keep_run_settings
from icm.data import DetectionDataset, DetectionImageDataset, collate_detection
from icm.detectors.base import Detector, eval_mode
from icm.detectors.weights import read_detector_checkpoint, save_detector_checkpoint
from icm.io import append_jsonl
from icm.rng import capture_rng_state, restore_rng_state, seed_everything
from icm.schedule import warmup_cosine
from icm.voc_eval import voc_map

# Family -> (optimiser, learning rate from scratch, weight decay) used when not given: the
# settings measured to fit 32 toy images in 200-300 steps at batch 16. Torchvision's own
# recipe, SGD (lr 0.01, momentum 0.9; ``--optimizer sgd``), lowered a toy Faster R-CNN's
# loss three times more slowly than AdamW at 1e-3. Fine-tuning uses a tenth of the rate.
FAMILY_DEFAULTS: dict[str, tuple[str, float, float]] = {
    "centernet": ("adamw", 4e-3, 1e-4),
    "ultralytics": ("adamw", 2e-3, 5e-4),
    "torchvision": ("adamw", 1e-3, 1e-4),
}
FALLBACK_DEFAULTS = ("adamw", 1e-3, 1e-4)
FINETUNE_LR_FACTOR = 0.1
LAST_CHECKPOINT = "last.pt"
LOG_FILE = "log.jsonl"
RESUME_KEYS = ("optimizer", "scheduler", "step", "best_map", "history", "rng", "settings")


@dataclass
class TrainSettings:
    """How to train; ``None`` entries take the family default or are derived."""

    max_steps: int | None = None  # total optimiser steps; None: epochs * steps per epoch
    epochs: int = 50
    batch_size: int = 16
    optimizer: str | None = None  # "adamw" | "sgd"
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9  # SGD only
    warmup_steps: int | None = None  # None: 10% of the steps, at most 500
    clip_grad: float = 10.0  # max gradient norm; 0 disables clipping
    hflip: float = 0.5  # probability of a horizontal flip per image
    augment: bool = False  # photometric augmentation (colour, blur, noise: see photometric())
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    val_every: int = 1  # validate every this many epochs (and after the last step)
    checkpoint_every: int = 1000  # also write last.pt every this many steps

    def resolved(self, family: str, steps_per_epoch: int, pretrained: bool = False) -> TrainSettings:
        """A copy with every derived value filled in."""
        optimizer, lr, weight_decay = FAMILY_DEFAULTS.get(family, FALLBACK_DEFAULTS)
        out = TrainSettings(**asdict(self))
        out.optimizer = (self.optimizer or optimizer).lower()
        out.lr = self.lr if self.lr is not None else lr * (FINETUNE_LR_FACTOR if pretrained else 1.0)
        out.weight_decay = self.weight_decay if self.weight_decay is not None else weight_decay
        out.max_steps = self.max_steps if self.max_steps is not None else self.epochs * steps_per_epoch
        if out.warmup_steps is None:
            out.warmup_steps = min(500, out.max_steps // 10)
        return out


def make_optimizer(detector: Detector, name: str, lr: float, weight_decay: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters; no weight decay on biases and norms."""
    decay, no_decay = [], []
    for p in detector.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r} (adamw or sgd)")


def hflip(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mirror an image left-right and its boxes (and instance masks) with it."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    flipped = {**target, "boxes": boxes}
    if "masks" in target:
        flipped["masks"] = target["masks"].flip(-1)
    return image.flip(-1), flipped


# The mild photometric augmentation of zoo detection recipes (torchvision's and ultralytics'
# colour jitter, blur and noise), each applied with its probability.
COLOUR_JITTER = (0.8, 0.2)  # probability; brightness, contrast and saturation factors in 1 +- 0.2
BLUR = (0.3, (0.1, 1.2))  # probability; Gaussian sigma range in pixels (5x5 kernel)
NOISE = (0.5, 12 / 255)  # probability; Gaussian noise sigma drawn from [0, this]


def photometric(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Colour jitter, Gaussian blur and Gaussian noise on one RGB [0, 1] image (boxes do not
    move), drawn from ``generator``; clamped to [0, 1]."""
    def draw() -> float:
        return float(torch.rand((), generator=generator))

    x = image
    if draw() < COLOUR_JITTER[0]:
        b, c, s = (1 + COLOUR_JITTER[1] * (2 * draw() - 1) for _ in range(3))
        x = x * b
        x = (x - x.mean()) * c + x.mean()
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = ((x - grey) * s + grey).clamp(0, 1)
    if draw() < BLUR[0]:
        sigma = BLUR[1][0] + (BLUR[1][1] - BLUR[1][0]) * draw()
        r = torch.arange(5, dtype=torch.float32) - 2
        k = torch.exp(-0.5 * (r / sigma) ** 2)
        k = (k / k.sum()).to(x)
        x = torch.nn.functional.conv2d(torch.nn.functional.pad(x[:, None], (2, 2, 2, 2), mode="replicate"),
                                       (k[:, None] * k[None, :])[None, None])[:, 0]
    if draw() < NOISE[0]:
        sigma = NOISE[1] * draw()
        x = x + sigma * torch.randn(x.shape, generator=generator).to(x)
    return x.clamp(0, 1)


class _EpochData(Dataset):
    """Dataset items with this epoch's flips applied (flip decided per index) and, with
    ``augment_seed``, :func:`photometric` drawn from a generator seeded by (seed, index)."""

    def __init__(self, images: DetectionImageDataset, flips: torch.Tensor, augment_seed: int | None = None) -> None:
        self.images = images
        self.flips = flips
        self.augment_seed = augment_seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.images[i]
        if self.augment_seed is not None:
            image = photometric(image, torch.Generator().manual_seed(self.augment_seed * 1_000_003 + i))
        return hflip(image, target) if self.flips[i] else (image, target)


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int, flip_prob: float) -> tuple[list[list[int]], torch.Tensor]:
    """This epoch's batches of indices and per-index flips (deterministic in seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=generator).tolist()
    flips = torch.rand(num_samples, generator=generator) < flip_prob
    return [order[i : i + batch_size] for i in range(0, num_samples, batch_size)], flips


def predicts_masks(detector: Detector) -> bool:
    """Whether the detector has an instance-mask head (trained on the dataset's masks)."""
    roi_heads = getattr(getattr(detector, "model", None), "roi_heads", None)
    return bool(roi_heads is not None and roi_heads.has_mask())


def training_targets(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Boxes, labels (and instance masks) for the loss; COCO crowd boxes are left out."""
    out = []
    for t in targets:
        keep = ~t["iscrowd"] if "iscrowd" in t else torch.ones(len(t["labels"]), dtype=torch.bool)
        target = {"boxes": t["boxes"][keep].to(device), "labels": t["labels"][keep].to(device)}
        if "masks" in t:
            target["masks"] = t["masks"][keep].to(device)
        out.append(target)
    return out


@torch.no_grad()
def evaluate_map50(detector: Detector, dataset: DetectionDataset, device: torch.device, batch_size: int = 8, num_workers: int = 0) -> float | None:
    """VOC all-point mAP@0.5 of ``detector`` on ``dataset`` (in eval mode)."""
    loader = DataLoader(DetectionImageDataset(dataset), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_detection)
    predictions, ground_truth = [], []
    with eval_mode(detector):
        for images, targets in loader:
            preds = detector.predict([img.to(device) for img in images])
            predictions += [{k: v.cpu() for k, v in p.items()} for p in preds]
            ground_truth += [{"boxes": t["boxes"], "labels": t["labels"], "difficult": t["difficult"]} for t in targets]
    return voc_map(ground_truth, predictions, num_classes=len(dataset.classes)).map


def make_card(detector: Detector, dataset_name: str, step: int, epoch: int, val_map50: float | None, extra: dict | None = None) -> dict:
    """The record stored with a checkpoint: what was trained, on what, how far, how well."""
    return {
        "architecture": detector.name,
        "family": detector.family,
        "classes": list(detector.classes),
        "dataset": dataset_name,
        "steps": step,
        "epochs": epoch,
        "val_map50": val_map50,
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


# What a resumed run may change: its length and its bookkeeping, not how it optimises.
RESUMABLE_CHANGES = ("max_steps", "epochs", "num_workers", "log_every", "val_every", "checkpoint_every")


def resumed_settings(asked: TrainSettings, saved: dict[str, Any], path: Path,
                     explicit: set[str] | None = None) -> TrainSettings:
    """The saved run's settings, with only :data:`RESUMABLE_CHANGES` taken from ``asked``
    (so a longer ``max_steps`` extends the run); a setting in ``explicit`` (None: every
    ``asked`` value that is not the default) that disagrees with the run is a one-line error."""
    if explicit is None:
        default = TrainSettings()
        explicit = {k for k, v in asdict(asked).items() if v is not None and v != getattr(default, k)}
    defining = [k for k in saved if k not in RESUMABLE_CHANGES]
    return TrainSettings(**keep_run_settings(asdict(asked), saved, defining, explicit, path))


def read_resume_checkpoint(path: Path, detector: Detector) -> dict[str, Any]:
    """``last.pt`` of a run of ``detector`` with everything ``--resume`` needs, or a one-line error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: nothing to resume from")
    state = read_detector_checkpoint(path)
    if state is None:
        raise ValueError(f"{path}: not one of our detector checkpoints")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is not a resumable training checkpoint (lacks {', '.join(missing)}); "
                         "fine-tune from it with --weights PATH instead")
    if state["name"] != detector.name:
        raise ValueError(f"{path}: a run of {state['name']!r}, not {detector.name!r}")
    return state


def train_detector(
    detector: Detector,
    train_set: DetectionDataset,
    val_set: DetectionDataset | None,
    out_dir: str | os.PathLike,
    settings: TrainSettings,
    device: torch.device,
    resume: bool = False,
    card_extra: dict | None = None,
    progress: bool = True,
    pretrained: bool = False,
    explicit: set[str] | None = None,
) -> dict[str, Any]:
    """Train ``detector`` on ``train_set``, validating on ``val_set`` each epoch.

    Writes ``last.pt`` (with the resume state), ``best.pt`` (best validation mAP@0.5; the
    last one when there is no validation set) and ``log.jsonl`` into ``out_dir``. With
    ``resume`` the run continues from ``last.pt``, keeping its settings except the ones it
    may change; ``explicit``: the settings the user set (see :func:`resumed_settings`).
    ``pretrained`` (fine-tuning) lowers the default learning rate. Returns a summary (steps,
    losses, mAP history, resolved settings).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0:
        raise ValueError(f"training set {train_set.name!r} is empty")
    resume_path = out_dir / LAST_CHECKPOINT
    state = None
    if resume:
        state = read_resume_checkpoint(resume_path, detector)
        settings = resumed_settings(settings, state["settings"], resume_path, explicit)
    elif resume_path.exists():
        raise ValueError(f"{out_dir} already holds a training run ({LAST_CHECKPOINT}); pass --resume or choose another --out")
    steps_per_epoch = math.ceil(len(train_set) / settings.batch_size)
    settings = settings.resolved(detector.family, steps_per_epoch, pretrained)
    detector.to(device).set_trainable(True)
    optimizer = make_optimizer(detector, settings.optimizer, settings.lr, settings.weight_decay, settings.momentum)
    scheduler = warmup_cosine(optimizer, settings.warmup_steps, settings.max_steps)
    step, best_map, history = 0, -1.0, []

    if state is not None:
        try:
            detector.load_state_dict(state["state_dict"])
        except RuntimeError as e:
            raise ValueError(f"{resume_path}: parameters do not fit {detector.name!r} ({str(e).splitlines()[0]})") from e
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best_map, history = state["step"], state["best_map"], state["history"]
        restore_rng_state(state["rng"])
    else:
        seed_everything(settings.seed)

    def save(name: str, val_map50: float | None) -> None:
        card = make_card(detector, train_set.name, step, step / steps_per_epoch, val_map50,
                         {"settings": asdict(settings), **(card_extra or {})})
        if name != LAST_CHECKPOINT:
            save_detector_checkpoint(out_dir / name, detector, card)
            return
        resume_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                        "best_map": best_map, "history": history, "rng": capture_rng_state(),
                        "settings": asdict(settings)}
        save_detector_checkpoint(out_dir / name, detector, card, half=False, extra=resume_state)

    images = DetectionImageDataset(train_set, masks=predicts_masks(detector))
    log_path = out_dir / LOG_FILE
    bar = tqdm(total=settings.max_steps, initial=step, desc=f"train {detector.name}", disable=not progress, dynamic_ncols=True)
    losses, window, started = [], [], time.perf_counter()
    while step < settings.max_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        batches, flips = epoch_batches(len(train_set), settings.batch_size, settings.seed, epoch, settings.hflip)
        augment_seed = (settings.seed * 10_007 + epoch) if settings.augment else None
        loader = DataLoader(_EpochData(images, flips, augment_seed), batch_sampler=batches[skip:],
                            num_workers=settings.num_workers, collate_fn=collate_detection)
        for batch_images, batch_targets in loader:
            loss = detector.loss([img.to(device) for img in batch_images], training_targets(batch_targets, device))
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"step {step}: loss is {loss_value}; lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(detector.parameters(), settings.clip_grad)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss_value)
            window.append(loss_value)
            lr = optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if step % settings.log_every == 0 or step == settings.max_steps:
                append_jsonl(log_path, {"step": step, "epoch": epoch + 1, "loss": float(np.mean(window)), "lr": lr,
                                        "seconds": round(time.perf_counter() - started, 3)})
                window = []
            epoch_done = step % steps_per_epoch == 0 and (step // steps_per_epoch) % settings.val_every == 0
            if epoch_done or step == settings.max_steps:
                val_map50 = None
                if val_set is not None:
                    val_map50 = evaluate_map50(detector, val_set, device, settings.batch_size, settings.num_workers)
                record = {"step": step, "epoch": epoch + 1, "val_map50": val_map50}
                history.append(record)
                append_jsonl(log_path, record)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", map50="-" if val_map50 is None else f"{val_map50:.3f}")
                if val_map50 is None or val_map50 > best_map:
                    best_map = -1.0 if val_map50 is None else val_map50
                    save("best.pt", val_map50)
                save(LAST_CHECKPOINT, val_map50)  # after best_map moved: a resume starts from this state
            elif step % settings.checkpoint_every == 0:
                save(LAST_CHECKPOINT, None)
            if step >= settings.max_steps:
                break
    bar.close()
    detector.freeze()
    return {"steps": step, "losses": losses, "history": history, "best_map50": None if best_map < 0 else best_map,
            "seconds": time.perf_counter() - started, "settings": asdict(settings)}
