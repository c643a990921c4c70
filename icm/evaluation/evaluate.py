"""Evaluate codecs: real-bitstream bpp, PSNR, MS-SSIM, coding time and the detection mAP of
seen and unseen detectors on the decoded images.

    python Evaluation/evaluate.py --config configs/toy.yaml                  # what the config lists
    cd Evaluation && python evaluate.py --dataset voc --split test \\
        --codecs none jpeg webp bmshj2018-hyperprior=1,2,3,4 maa=../runs/q3.pth.tar \\
        --detectors yolov3 faster_rcnn centernet retinanet \\
        --seen_detectors yolov3 faster_rcnn centernet --unseen_detectors retinanet --out results
    icm-evaluate --dataset ~/kodak --codecs jpeg bmshj2018-hyperprior --out results/kodak

``--codecs`` entries: ``none`` (uncompressed upper bound), ``jpeg[=Q,...]``,
``webp[=Q,...]`` (Pillow, default ``--pillow_qualities``), a CompressAI zoo model
``NAME[=Q,...]`` (the anchor, default ``--qualities``), a stage-two checkpoint ``PATH`` or
``LABEL=PATH[,PATH...]`` (several checkpoints of one method make one curve).

Config (``--config FILE``, section ``evaluation:``): every flag below by its name, e.g.::

    evaluation:
      dataset: toy
      split: val
      codecs: [none, "jpeg=10,30,50,70,90", "base=assets/toy/codec_q3.pth.tar"]
      detectors: [toy_yolov3, toy_faster_rcnn, toy_centernet, toy_ssdlite]
      seen_detectors: [toy_yolov3, toy_faster_rcnn, toy_centernet]
      unseen_detectors: [toy_ssdlite]
      weights: [toy_yolov3=assets/toy/yolov3.pt]        # or a mapping NAME: PATH
      out: runs/toy/eval

Outputs in ``--out``: ``points/<codec>-q<Q>.json`` per (codec, quality) (a rerun skips
finished ones), ``<codec>.json`` per codec (the curve, CompressAI's schema, which
``python -m compressai.utils.plot -f OUT/*.json`` and ``Evaluation/make_tables.py`` read),
``config.yaml`` and ``environment.yaml``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from icm.cli import (
    detector_weights,
    exit_on_user_error,
    key_value,
    limit,
    non_negative_int,
    positive_int,
    probability,
    resolve_device,
    shard,
)
from icm.config import parse_args_with_config, save_run_config
from icm.io import read_json

DEFAULT_ZOO_QUALITIES = [1, 2, 3, 4, 5, 6]
DEFAULT_PILLOW_QUALITIES = [10, 20, 30, 50, 70, 90]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Rate (real bitstreams), PSNR, MS-SSIM and detection mAP of codecs; one JSON "
        "per (codec, quality) and per codec in CompressAI's result schema.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file of defaults (section evaluation); flags win. "
                   "--dataset toy without --config uses configs/toy.yaml")
    p.add_argument("--dataset", default="toy", help="voc, coco, oid, toy, a dataset config, or a folder of "
                   "images (no labels: rate and fidelity only)")
    p.add_argument("--data_root", default=None, help="dataset root; None: the dataset config's root")
    p.add_argument("--split", default=None, help="dataset split; None: the config's 'val' split (VOC: 2007 test)")
    p.add_argument("--codecs", nargs="+", default=["none"],
                   help="none | jpeg[=Q,..] | webp[=Q,..] | ZOO_NAME[=Q,..] | CHECKPOINT | LABEL=CKPT[,CKPT..]")
    p.add_argument("--qualities", nargs="+", type=positive_int, default=DEFAULT_ZOO_QUALITIES,
                   help="qualities (1..8) of zoo codecs given without =Q")
    p.add_argument("--pillow_qualities", nargs="+", type=non_negative_int, default=DEFAULT_PILLOW_QUALITIES,
                   help="qualities (0..100) of jpeg/webp given without =Q")
    p.add_argument("--metric", choices=["mse", "ms-ssim"], default="mse", help="zoo codecs' training metric")
    p.add_argument("--backbone", default=None,
                   help="architecture of checkpoints that do not record one (CompressAI training "
                   "checkpoints, bare state dicts), e.g. bmshj2018-hyperprior")
    p.add_argument("--detectors", nargs="*", default=None,
                   help="detector names; None: the seen + unseen detectors")
    p.add_argument("--seen_detectors", nargs="*", default=[], help="detectors of the model set (group 'seen')")
    p.add_argument("--unseen_detectors", nargs="*", default=[], help="detectors outside it (group 'unseen')")
    p.add_argument("--task_detectors", nargs="*", default=[],
                   help="models of another task (group 'task', e.g. instance segmentation: their mask AP), "
                   "kept out of the other groups' and the 'all' means")
    p.add_argument("--weights", type=key_value, action="append", default=[], metavar="NAME=PATH",
                   help="local weights for a detector (repeatable; PATH 'none' or 'random' = random init, for smoke "
                   "tests); others use their default weights")
    p.add_argument("--mask_annotations", default=None,
                   help="COCO instances JSON with segmentations, for mask AP of detectors that predict masks (matched to the images by file name); None: the split's own masks file where the dataset has one (the toy set, COCO)")
    p.add_argument("--ground_truth", choices=["labels", "pseudo"], default="labels",
                   help="labels: the dataset's boxes; pseudo: for photos without labels, the one detector's own "
                   "detections (score >= --pseudo_score) on each uncompressed image, in its own classes (the ICM "
                   "papers' protocol; named in the result JSON)")
    p.add_argument("--pseudo_score", type=probability, default=0.5, help="score threshold of --ground_truth pseudo")
    p.add_argument("--per_class", action="store_true", help="also report AP per class")
    p.add_argument("--estimate", action="store_true",
                   help="rate of learned codecs from the likelihoods (labelled 'estimated bpp') "
                   "instead of real bitstreams")
    p.add_argument("--out", default="results", help="results folder")
    p.add_argument("--limit", type=limit, default=None, help="evaluate the first N images only")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--batch_size", type=positive_int, default=8, help="decoded images per detector batch")
    p.add_argument("--overwrite", action="store_true", help="re-evaluate finished (codec, quality) results")
    p.add_argument("--seed", type=int, default=0, help="seed of torch's global generator, set before any work (the codecs and detectors here draw nothing at test time)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar or per-point lines")
    p.add_argument("--shard", type=shard, default=None, metavar="I/N",
                   help="evaluate the I-th of N contiguous blocks of the images (torchrun's RANK/WORLD_SIZE when "
                   "not given under torchrun); merge the shards' --out folders with --merge")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="merge the --out folders of the shards of one run into --out (the result files of one "
                   "unsharded run; every metric recomputed on all images) and evaluate nothing")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; ``--dataset toy`` without ``--config`` reads configs/toy.yaml."""
    parser = build_parser()
    args = parse_args_with_config(parser, argv, "evaluation")
    args.seen_detectors = split_names(args.seen_detectors)
    args.unseen_detectors = split_names(args.unseen_detectors)
    args.task_detectors = split_names(args.task_detectors)
    if args.detectors is None:
        args.detectors = list(dict.fromkeys(args.seen_detectors + args.unseen_detectors + args.task_detectors))
    args.detectors = split_names(args.detectors)
    args.weights = detector_weights(args.weights)
    return args


def split_names(items) -> list[str]:
    """Names from a list whose items may themselves be comma lists (``a,b c`` -> a, b, c)."""
    if isinstance(items, str):
        items = [items]
    return [n.strip() for item in items or [] for n in str(item).split(",") if n.strip()]


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    import torch

    from icm.codec import read_checkpoint
    from icm.evaluation.engine import load_evaluation_dataset, parse_codec_spec, run_evaluation

    args = parse_args(argv)
    if args.merge:
        from icm.evaluation.shards import merge_shards

        for path in merge_shards(args.merge, args.out):
            print(path)
        return 0
    if args.shard is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args.shard = (int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]))
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    specs = [parse_codec_spec(c, args.qualities, args.pillow_qualities) for c in split_codecs(args.codecs)]
    for path in (p for spec in specs for p in spec.paths):
        read_checkpoint(path)  # every checkpoint readable before any codec is evaluated, not after the others
    dataset = load_evaluation_dataset(str(args.dataset), args.split, args.data_root, args.limit)
    full_dataset = dataset
    if args.shard is not None:
        from icm.evaluation.shards import shard_of

        dataset = shard_of(dataset, args.shard)

    detectors = {}
    ground_truth_note = None
    if args.ground_truth == "pseudo":
        from icm.detectors import build_detector_set
        from icm.evaluation.engine import pseudo_labelled

        if len(args.detectors) != 1 or args.shard is not None:
            raise ValueError("--ground_truth pseudo takes exactly one detector (its own ground truth) and no --shard")
        detectors = build_detector_set(args.detectors, args.weights, None, str(device))
        (name, detector), = detectors.items()
        dataset = pseudo_labelled(dataset, detector, args.pseudo_score, args.batch_size, not args.no_progress)
        ground_truth_note = (f"pseudo: {name}'s own detections of score >= {args.pseudo_score} on each uncompressed "
                             f"image ({sum(s.num_objects for s in dataset.samples)} boxes), in its classes; labels "
                             "missing, so mAP measures agreement with what it sees on the original")
    elif args.detectors and not dataset.classes:
        print(f"warning: {dataset.name} has no labels; detection skipped, rate and fidelity only", file=sys.stderr)
    elif args.detectors:
        from icm.detectors import build_detector_set

        detectors = build_detector_set(args.detectors, args.weights, dataset.classes, str(device))
    mask_file = args.mask_annotations or dataset.mask_file  # the flag, else the split's own masks file
    mask_ground_truth = None
    if mask_file and dataset.classes:
        from icm.evaluation.coco_eval import image_ids_of, mask_ground_truth_for

        mask_ground_truth = mask_ground_truth_for(read_json(mask_file), dataset.samples,
                                                  image_ids_of(dataset, dataset.samples), str(mask_file))

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(out_dir, vars(args), str(device))
    groups = {"seen": args.seen_detectors, "unseen": args.unseen_detectors, "task": args.task_detectors}
    settings = {
        "dataset": dataset.name, "split": args.split, "data_root": args.data_root,
        "num_images": len(dataset), "limit": args.limit, "detectors": args.detectors,
        "detector_groups": groups, "weights": args.weights, "per_class": args.per_class,
        "estimate": args.estimate, "mask_annotations": None if mask_file is None else str(mask_file),
    }
    if ground_truth_note:
        settings["ground_truth"] = ground_truth_note
    if args.shard is not None:  # what the merge needs to reload the whole image list
        settings.update({"shard": list(args.shard), "dataset_arg": str(args.dataset), "num_images_all": len(full_dataset)})
    print(f"evaluating {len(specs)} codec(s) on {len(dataset)} images of {dataset.name}, "
          f"detectors {args.detectors or 'none'}, device {device}", file=sys.stderr)
    curves = run_evaluation(
        specs, dataset, detectors, out_dir, settings, device=device, metric=args.metric,
        estimate=args.estimate, batch_size=args.batch_size, per_class=args.per_class, groups=groups,
        mask_ground_truth=mask_ground_truth, overwrite=args.overwrite, progress=not args.no_progress,
        backbone=args.backbone,
    )
    for path in curves:
        print(path)
    return 0


def split_codecs(items) -> list[str]:
    """``--codecs`` entries (a config may give them as one string with spaces)."""
    if isinstance(items, str):
        items = [items]
    return [part for item in items for part in str(item).split()]


if __name__ == "__main__":
    sys.exit(main())
