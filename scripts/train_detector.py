"""Train or fine-tune any registered detector on a VOC/COCO-format dataset (CPU or GPU).

    python scripts/train_detector.py --model toy_centernet --dataset toy --epochs 30 --out runs/toy_centernet
    python scripts/train_detector.py --model faster_rcnn --dataset voc --weights default --epochs 12 --out runs/frcnn_voc
    python scripts/train_detector.py --model toy_yolov8 --dataset toy --out runs/toy_yolov8 --resume

``--weights none`` (the default) trains from random initialisation with a head for the
dataset's classes; ``default`` or a PATH fine-tunes pretrained weights (a COCO head keeps its
80 classes and is trained through the class map; ``--new_head`` gives it the dataset's
classes instead; one of our checkpoints continues with its own head). Outputs in ``--out``:
``last.pt`` (fp32, with everything ``--resume`` needs), ``best.pt`` (fp16: what is shipped;
both load through ``icm.detectors.load_detector``), ``log.jsonl``, ``config.yaml``,
``environment.yaml``, ``summary.json``: the layout of stage two's trainer, whose ``--resume``
and settings rule it shares (a resumed run keeps how it optimises; its length may change).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from icm.cli import (
    exit_on_user_error,
    limit,
    link_latest,
    non_negative_int,
    non_negative_number,
    positive_int,
    positive_number,
    probability,
    refuse_existing_run,
    resolve_device,
    resume_file,
    settings_run_folder,
)
from icm.config import REPO_ROOT, explicit_flags, parse_args_with_config, save_run_config
from icm.data import load_dataset
from icm.detectors import Detector, available, build_detector, read_detector_checkpoint
from icm.detectors.training import LAST_CHECKPOINT, TrainSettings, train_detector
from icm.io import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_detector.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="YAML config (top-level keys and a train_detector: section)")
    p.add_argument("--model", help="registered detector name (required), e.g. toy_centernet, toy_yolov8, faster_rcnn")
    p.add_argument("--dataset", default="toy", help="dataset config name (configs/datasets/) or YAML path")
    p.add_argument("--data_root", help="the dataset's folder, replacing the config's root")
    p.add_argument("--split", default="train", help="training split")
    p.add_argument("--val_split", default="val", help="validation split ('none' to skip validation)")
    p.add_argument("--limit", type=limit, help="use only the first N images of each split")
    p.add_argument("--weights", default="none",
                   help="initial weights: 'none' (random), 'default' (the library's pretrained) or a PATH")
    p.add_argument("--new_head", action="store_true",
                   help="with pretrained weights: a head for the dataset's classes instead of the native one")
    p.add_argument("--epochs", type=positive_int, default=50, help="epochs (ignored when --max_steps is given)")
    p.add_argument("--max_steps", type=positive_int, help="total optimiser steps")
    p.add_argument("--batch_size", type=positive_int, default=16, help="images per training step")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], help="default: AdamW (SGD uses Nesterov momentum --momentum)")
    p.add_argument("--lr", type=positive_number, help="peak learning rate; default per family from scratch "
                   "(CenterNet 4e-3, ultralytics 2e-3, torchvision 1e-3), a tenth of it when fine-tuning")
    p.add_argument("--weight_decay", type=non_negative_number, help="default per family (1e-4; ultralytics 5e-4)")
    p.add_argument("--momentum", type=probability, default=0.9, help="SGD momentum")
    p.add_argument("--warmup_steps", type=non_negative_int, help="linear warm-up steps; default 10%% of the steps, at most 500")
    p.add_argument("--clip_grad", type=non_negative_number, default=10.0, help="max gradient norm (0: no clipping)")
    p.add_argument("--hflip", type=probability, default=0.5, help="probability of a horizontal flip")
    p.add_argument("--augment", action="store_true",
                   help="photometric augmentation of zoo recipes: colour jitter (p 0.8, +-20%%), Gaussian blur "
                   "(p 0.3, sigma 0.1-1.2 px), Gaussian noise (p 0.5, sigma up to 12/255)")
    p.add_argument("--init_backbone", default=None, metavar="PATH",
                   help="start the body from a pretrained backbone file (icm.detectors.pretraining; "
                   "scripts/build_toy_assets.py makes them for the toy detectors); the rest stays random")
    p.add_argument("--out", default=None,
                   help="output folder; None: runs/detectors/<model>-<settings hash> (a folder per run, "
                   "runs/detectors/latest points at the newest)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue a run exactly, in its folder: PATH is its last.pt or its folder; alone, "
                   "the run in --out. Its settings are kept; only --max_steps, --epochs, --num_workers, "
                   "--log_every, --val_every and --checkpoint_every may change")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in --out even if it holds one (its checkpoints and log are replaced)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--num_workers", type=non_negative_int, default=0, help="data-loading worker processes")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and augmentation")
    p.add_argument("--val_every", type=positive_int, default=1, help="validate every N epochs (and at the end)")
    p.add_argument("--log_every", type=positive_int, default=10, help="steps per line of log.jsonl")
    p.add_argument("--checkpoint_every", type=positive_int, default=1000, help="steps between mid-epoch checkpoints")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def build_for_training(name: str, classes: list[str], weights: str, new_head: bool, device: torch.device) -> Detector:
    """The detector to train: random init with a head for ``classes``, or pretrained weights
    (native head with the class map, or a new head with ``new_head``, or our checkpoint's head)."""
    if weights.lower() == "none":
        return build_detector(name, classes=classes, num_classes=len(classes), weights=None, device=device)
    if weights != "default":
        checkpoint = read_detector_checkpoint(weights)
        if checkpoint is not None:
            if new_head:
                raise ValueError(f"--new_head: {weights} is one of our checkpoints and keeps its own head")
            return build_detector(name, classes=classes, weights=weights, device=device)
    num_classes = len(classes) if new_head else None
    return build_detector(name, classes=classes, num_classes=num_classes, weights=weights, device=device)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args_with_config(parser, argv, "train_detector")
    if not args.model:
        raise ValueError(f"--model is required; available: {', '.join(available())}")
    default_out = args.out is None
    if default_out and args.resume is None:
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "device", "no_progress", "overwrite")}
        args.out = str(settings_run_folder(REPO_ROOT / "runs" / "detectors", args.model, settings))
    out = Path(args.out) if args.out else None
    if args.resume is not None:
        out = resume_file(args.resume, args.out, LAST_CHECKPOINT).parent
    elif args.overwrite:
        for name in (LAST_CHECKPOINT, "best.pt", "log.jsonl"):
            (out / name).unlink(missing_ok=True)
    else:
        refuse_existing_run(out, (LAST_CHECKPOINT, "best.pt", "log.jsonl"), out)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    train_set = load_dataset(args.dataset, split=args.split, root=args.data_root, limit=args.limit)
    val_set = None
    if args.val_split and args.val_split.lower() != "none":
        val_set = load_dataset(args.dataset, split=args.val_split, root=args.data_root, limit=args.limit)
    detector = build_for_training(args.model, train_set.classes, args.weights, args.new_head, device)
    backbone_card = None
    if args.init_backbone:  # on --resume the run's own weights replace these; the card keeps the record
        from icm.detectors.pretraining import load_body

        if args.weights.lower() != "none":
            raise ValueError("--init_backbone starts from random weights: give --weights none")
        backbone_card = load_body(args.init_backbone, detector)
    out.mkdir(parents=True, exist_ok=True)
    if default_out and args.resume is None:
        link_latest(out)
    save_run_config(out, args, str(device))
    settings = TrainSettings(
        max_steps=args.max_steps, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum, warmup_steps=args.warmup_steps, clip_grad=args.clip_grad,
        hflip=args.hflip, augment=args.augment, seed=args.seed, num_workers=args.num_workers, log_every=args.log_every, val_every=args.val_every,
        checkpoint_every=args.checkpoint_every,
    )
    summary = train_detector(
        detector, train_set, val_set, out, settings, device, resume=args.resume is not None,
        card_extra={"weights_init": args.weights, "split": args.split, "val_split": args.val_split,
                    "init_backbone": None if backbone_card is None else {"path": args.init_backbone, **backbone_card}},
        progress=not args.no_progress, pretrained=args.weights.lower() != "none",
        explicit=explicit_flags(parser, argv, args),
    )
    losses = summary.pop("losses")
    summary["first_loss"], summary["last_loss"] = (losses[0], losses[-1]) if losses else (None, None)
    atomic_write_json(out / "summary.json", summary)
    best = summary["best_map50"]
    print(f"{args.model}: {summary['steps']} steps, best val mAP@0.5 "
          f"{'-' if best is None else f'{best:.4f}'}; checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
