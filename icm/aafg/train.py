"""Stage one, Meta-AAFG: write adversarially *helpful* versions of a dataset's images.

    cd MetaAAFG && python train_meta_aafg.py --dataset VOC --epsilon 8/255 --meta_steps 10 --save_path ./augmented_data
    python MetaAAFG/train_meta_aafg.py --dataset toy --limit 20 --save_path runs/aafg   # from the repo root
    icm-train-meta-aafg --config configs/toy.yaml --save_path runs/aafg                      # installed
    torchrun --nproc_per_node 8 MetaAAFG/train_meta_aafg.py ...                         # one shard per GPU

Output: ``images/<id>.png``, ``manifest.jsonl`` (``manifest.shard-I-of-N.jsonl`` per shard),
``config.yaml`` (see icm/aafg/engine.py).
A rerun skips the images already in the manifest. Exit status 1 when more images than
``--max_failures`` could not be read (all the others are done first), 2 on a bad flag or file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from icm.aafg.engine import combined_shard, run_stage_one, write_summary
from icm.aafg.meta_aafg import MetaAAFGConfig, Reconstruction, gradient_budget
from icm.cli import (
    detector_weights,
    exit_on_user_error,
    key_value,
    limit,
    non_negative_int,
    positive_int,
    positive_number,
    probability,
    resolve_device,
    shard,
)
from icm.config import load_yaml, parse_args_with_config, save_run_config, to_plain
from icm.data import DetectionDataset, load_dataset
from icm.manifest import manifest_files

if TYPE_CHECKING:
    from icm.detectors import Detector

DEFAULT_MODELS = "yolov3,faster_rcnn,centernet"
# Settings that change the images: a rerun into a folder made with others would mix two runs.
RESULT_KEYS = ("dataset", "data_root", "split", "models", "weights", "epsilon", "meta_steps", "inner_steps", "alpha_in",
               "alpha_out", "direction", "meta", "sample_models", "diversity", "smooth", "delta_scale",
               "codec_aware", "autocast", "targets", "pseudo_threshold", "seed")


def add_algorithm_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of :class:`MetaAAFGConfig` (shared with benchmarks/meta_transfer.py)."""
    p.add_argument("--epsilon", type=positive_number, default="8/255",
                   help="L-inf radius, e.g. 8/255 or 0.03 (MGAA's official run: 16/255)")
    p.add_argument("--meta_steps", type=positive_int, default=10, help="T: meta (outer) iterations (MGAA: 10)")
    p.add_argument("--inner_steps", type=positive_int, default=5, help="K: meta-train steps per meta iteration (MGAA: 8)")
    p.add_argument("--alpha_in", type=positive_number, default=None, help="meta-train step, also the step of "
                   "--meta off (None: epsilon/16, as MGAA)")
    p.add_argument("--alpha_out", type=positive_number, default=None,
                   help="meta-test step (None: epsilon/meta_steps, as MGAA)")
    p.add_argument("--direction", choices=["helpful", "harmful"], default="helpful",
                   help="helpful lowers the detectors' loss; harmful raises it (ablation)")
    p.add_argument("--meta", choices=["on", "off"], default="on",
                   help="off: plain ensemble PGD with the same number of gradient evaluations")
    p.add_argument("--sample_models", type=non_negative_int, default=0,
                   help="N: a random subset of N models per meta iteration, the last drawn held out; "
                   "0: every model, held out in turn (MGAA: 6 of its 10)")
    p.add_argument("--diversity", type=probability, default=0.0,
                   help="P: probability of input diversity at each gradient: upscale by a random factor in "
                   "[1, 1.1) and zero-pad at a random offset to 1.1x the size, boxes moved alike; 0: off "
                   "(MGAA: 0.7)")
    p.add_argument("--smooth", type=non_negative_int, default=0,
                   help="K: smooth each gradient with a KxK Gaussian of sigma (K-1)/6 px (translation-"
                   "invariant attack); odd, 0: off (MGAA: 15, sigma 2.33 px)")
    p.add_argument("--delta_scale", type=positive_int, default=1,
                   help="S: optimise the perturbation at 1/S resolution (gradients pooled over SxS blocks, "
                   "steps upsampled bilinearly); 1: full resolution (MGAA: 1)")
    p.add_argument("--autocast", choices=["bf16", "off"], default="bf16",
                   help="bf16: detector forwards under bf16 autocast on CUDA (the perturbation stays fp32); "
                   "off: fp32. No effect on CPU")
    p.add_argument("--codec_aware", default=None, metavar="CODEC",
                   help="EXTENSION beyond the paper, off by default: take the detectors' losses on the frozen "
                   "anchor codec's reconstruction, with CompressAI's additive-noise proxy for quantisation. "
                   "CODEC is a codec checkpoint (e.g. assets/toy/codec_q3.pth.tar) or a zoo codec at a "
                   "quality, NAME=QUALITY (e.g. bmshj2018-hyperprior=3)")


def config_from_args(args: argparse.Namespace) -> MetaAAFGConfig:
    """The :class:`MetaAAFGConfig` of parsed :func:`add_algorithm_arguments` flags."""
    return MetaAAFGConfig(
        epsilon=args.epsilon, meta_steps=args.meta_steps, inner_steps=args.inner_steps,
        alpha_in=args.alpha_in, alpha_out=args.alpha_out, direction=args.direction,
        meta=args.meta == "on", sample_models=args.sample_models, diversity=args.diversity,
        smooth=args.smooth, delta_scale=args.delta_scale, autocast=args.autocast == "bf16",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_meta_aafg.py",
        description="Meta-AAFG (stage one): perturb each image within an L-inf ball so the model "
        "set of detectors does better on it, and write the results losslessly.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file of defaults (section meta_aafg); flags win. "
                   "--dataset toy without --config uses configs/toy.yaml")
    p.add_argument("--dataset", default="voc", help="voc, coco, oid, toy (any case), or a folder of images")
    p.add_argument("--data_root", default=None, help="dataset root; None: the dataset config's root")
    p.add_argument("--split", default="train", help="dataset split")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                   help="detector names, space-separated (a comma list works too; --dataset toy: the toy "
                   "config's model set)")
    p.add_argument("--weights", type=key_value, action="append", default=[], metavar="NAME=PATH",
                   help="local weights for a model (repeatable); others use their default weights")
    add_algorithm_arguments(p)
    p.add_argument("--targets", choices=["gt", "pseudo"], default="gt",
                   help="gt: the dataset's boxes; pseudo: each detector's predictions on the clean image")
    p.add_argument("--pseudo_threshold", type=probability, default=None,
                   help="score threshold of pseudo targets; None: each detector's own")
    p.add_argument("--batch_size", type=positive_int, default=None,
                   help="images per batch, of any sizes (each image's result is its own; see meta_aafg.py); "
                   "None: 8 on CUDA, 1 on CPU")
    p.add_argument("--device", default="auto", help="auto (CUDA when present; under torchrun local rank r "
                   "takes GPU r mod the GPU count), cpu, cuda, cuda:1, ...")
    p.add_argument("--channels_last", choices=["on", "off"], default="on",
                   help="detector weights in channels_last memory format (on CPU it cut the toy detectors' "
                   "forward+backward time by 1-28%%, see the README; the images are the same either way up to "
                   "float arithmetic)")
    p.add_argument("--cudnn_benchmark", action="store_true",
                   help="let cuDNN tune its algorithms per input shape: pays off with few distinct shapes "
                   "(fixed-canvas detectors, one image size), maybe not with COCO / Open Images' many sizes; off")
    p.add_argument("--limit", type=limit, default=None, help="only the first N images of the split")
    p.add_argument("--shard", type=shard, default=None, metavar="I/N",
                   help="do shard I of N (combined with torchrun's RANK/WORLD_SIZE when set)")
    p.add_argument("--seed", type=int, default=0, help="random seed; each image draws from its own generator, seeded from this and its id")
    p.add_argument("--out", "--save_path", dest="save_path", default="./augmented_data",
                   help="output folder (--save_path: the paper's name for it)")
    p.add_argument("--max_failures", type=non_negative_int, default=0,
                   help="unreadable images tolerated before the exit status is 1")
    p.add_argument("--force_unlock", action="store_true",
                   help="take over a shard's lock held by another machine (only when that process is gone)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; ``--dataset toy`` without ``--config`` reads configs/toy.yaml (the toy model set)."""
    parser = build_parser()
    args = parse_args_with_config(parser, argv, "meta_aafg")
    if isinstance(args.models, list | tuple):
        args.models = ",".join(args.models)
    return args


def build_model_set(names: list[str], dataset: DetectionDataset, weights: dict[str, str | None],
                    device: torch.device, pseudo_threshold: float | None) -> dict[str, Detector]:
    """The model set, in the dataset's classes (a plain folder keeps each detector's own)."""
    from icm.detectors import build_detector_set  # torchvision/ultralytics: not needed for --help

    detectors = build_detector_set(names, weights, dataset.classes, str(device), flag="--models")
    if pseudo_threshold is not None:
        for detector in detectors.values():
            detector.pseudo_threshold = pseudo_threshold
    return detectors


def anchor_reconstruction(spec: str, device: torch.device) -> Reconstruction:
    """The codec-aware extension's C: a frozen codec (checkpoint path, or zoo NAME=QUALITY)
    whose noisy-quantisation reconstruction the detectors' losses see."""
    from icm.codec import load_codec, noisy_reconstruction

    name, sep, quality = spec.partition("=")
    if sep:
        try:
            model, _ = load_codec(None, backbone=name, quality=int(quality), device=device)
        except ValueError as e:
            raise ValueError(f"--codec_aware {spec}: {e}") from None
    else:
        if not Path(spec).is_file():
            raise ValueError(f"--codec_aware {spec}: no such codec checkpoint (or give NAME=QUALITY)")
        model, _ = load_codec(spec, device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    return lambda x: noisy_reconstruction(model, x)


def check_resumable(save_path: Path, args: argparse.Namespace) -> None:
    """Refuse to add to a folder whose finished images were made with other settings."""
    previous_config = save_path / "config.yaml"
    if not manifest_files(save_path) or not previous_config.is_file():
        return
    previous = load_yaml(previous_config)
    current = to_plain(vars(args))
    changed = [k for k in RESULT_KEYS if k in previous and previous[k] != current.get(k)]
    if changed:
        k = changed[0]
        raise ValueError(f"{save_path} holds images made with {k}={previous[k]!r}, not {current.get(k)!r}: "
                         "use another --save_path (or the same settings to resume)")


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    shard_index, shard_count = combined_shard(
        args.shard, int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    )
    torch.manual_seed(args.seed)
    if device.type == "cuda" and args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    batch_size = args.batch_size or (8 if device.type == "cuda" else 1)
    config = config_from_args(args)
    codec = None if args.codec_aware is None else anchor_reconstruction(args.codec_aware, device)

    # Each process parses only its shard's annotations (VOC, COCO, Open Images readers).
    dataset = load_dataset(str(args.dataset), split=args.split, root=args.data_root, limit=args.limit,
                           shard=(shard_index, shard_count) if shard_count > 1 else None)
    if args.targets == "gt" and not dataset.classes:
        raise ValueError(f"dataset {args.dataset} has no labels: use --targets pseudo")
    samples = dataset.samples
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    detectors = build_model_set(names, dataset, detector_weights(args.weights), device, args.pseudo_threshold)
    if args.channels_last == "on":
        for detector in detectors.values():
            detector.to(memory_format=torch.channels_last)
    save_path = Path(args.save_path)
    check_resumable(save_path, args)
    save_path.mkdir(parents=True, exist_ok=True)
    save_run_config(save_path, vars(args), str(device))  # the shard goes in its summary file
    print(f"Meta-AAFG: {len(samples)} images of {dataset.name}/{args.split} "
          f"(shard {shard_index}/{shard_count}), models {names}, meta {args.meta}, "
          f"{gradient_budget(config, len(names))} gradient evaluations per image, device {device}, "
          f"batches of {batch_size}",
          file=sys.stderr)

    summary = run_stage_one(
        samples, detectors, config, save_path, targets=args.targets, batch_size=batch_size,
        device=device, seed=args.seed, shard=(shard_index, shard_count), progress=not args.no_progress,
        codec=codec, force_unlock=args.force_unlock, sharded=True,
    )
    write_summary(save_path, summary, (shard_index, shard_count))
    print(summary.format())
    if len(summary.failed) > args.max_failures:
        print(f"error: {len(summary.failed)} images failed (--max_failures {args.max_failures})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
