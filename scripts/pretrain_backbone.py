"""Pretrain a toy detector's backbone on the toy world's classification task (its ImageNet).

    python scripts/pretrain_backbone.py --model toy_fcos --out runs/pretrain/shufflenetv2.pt

The body of ``--model`` (random init, built for the toy classes) learns to name the shape,
the hue sector and the background kind of ``--images`` rendered images
(``icm.data.toy.render_toy_classification``), then its weights are written with a card
(``icm.detectors.pretraining``). ``scripts/train_detector.py --init_backbone FILE`` starts a
detector of the same architecture from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from icm.cli import exit_on_user_error, positive_int, positive_number
from icm.config import git_commit
from icm.io import append_jsonl


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain_backbone.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="registered toy detector whose body is pretrained, e.g. toy_fcos")
    p.add_argument("--out", required=True, help="the backbone file to write")
    p.add_argument("--images", type=positive_int, default=8000, help="classification images rendered (10%% held out)")
    p.add_argument("--size", type=positive_int, default=64, help="image side in pixels (toy shapes keep their pixel size)")
    p.add_argument("--steps", type=positive_int, default=800, help="optimiser steps")
    p.add_argument("--batch_size", type=positive_int, default=64, help="images per training step")
    p.add_argument("--lr", type=positive_number, default=2e-3, help="AdamW peak learning rate (warm-up, cosine decay)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images and of the training")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.images < 20 or args.steps < 1 or args.size < 32:
        raise ValueError("need --images >= 20, --steps >= 1 and --size >= 32")
    from icm.data.toy import CLASSIFICATION_LABELS, TOY_CLASSES, toy_classification_arrays
    from icm.detectors import build_detector
    from icm.detectors.pretraining import pretrain_body, save_body

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder; give the file to write")
    detector = build_detector(args.model, classes=TOY_CLASSES, num_classes=len(TOY_CLASSES), weights=None)
    images, labels = toy_classification_arrays(args.images, args.size, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log.jsonl")
    log_path.unlink(missing_ok=True)
    summary = pretrain_body(detector, torch.from_numpy(images), torch.from_numpy(labels), args.steps,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            log=lambda record: append_jsonl(log_path, record))
    card = {"task": "toy classification: " + ", ".join(CLASSIFICATION_LABELS), "model": args.model,
            "image_size": args.size, "seed": args.seed, "git_commit": git_commit(),
            "held_out_accuracy": dict(zip(CLASSIFICATION_LABELS, summary.pop("held_out_accuracy"))), **summary}
    save_body(out, detector, card)
    print(f"{args.model}: body pretrained in {card['seconds']} s, held-out accuracy "
          + ", ".join(f"{k} {v:.3f}" for k, v in card["held_out_accuracy"].items()) + f"; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
