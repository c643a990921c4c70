"""Does stage one's perturbation transfer? mAP of seen and unseen detectors on clean images,
against same-size random controls, with paired bootstrap intervals.

    python benchmarks/meta_transfer.py                                  # toy world, defaults
    python benchmarks/meta_transfer.py --smooth 15 --epsilon 16/255 --out runs/transfer/ti16.json
    python benchmarks/meta_transfer.py --summarize runs/transfer/*.json   # one row per result file

For the first ``--limit`` images of ``--split`` (images the detectors were not trained on),
stage one (icm/aafg/meta_aafg.py, with any of its options given here) perturbs each image
against the seen model set. Every seen and unseen detector is then scored (VOC07 11-point
mAP@0.5) on

- ``clean``:  the image x;
- ``maa``:    stage one's x_aug;
- ``random``: x plus random signs whose magnitude matches x_aug's mean |delta| per image
  (each pixel gets floor or ceil of it, at random, so the mean matches in expectation);
- ``smooth``: x plus a smooth random field (Gaussian noise at 1/8 resolution, upsampled
  bilinearly), clipped at epsilon and scaled to the same mean |delta|;
- ``noise``:  x plus random signs of exactly ``--noise_level`` levels on every pixel (the
  detectors' robustness to faint noise, whatever stage one does).

With ``--carried_by CODEC`` every variant is scored as the codec's decode of x (a real
bitstream) plus the variant's perturbation: the images a stage-two codec would give if it
carried the whole perturbation on top of the anchor's reconstruction. This is the ceiling
of what stage two can pass on at that codec's quality: a fine-tuned codec reproduces a
share of the perturbation (``benchmarks/delta_share.py``), so the decoded gain it can show
is at most about that share of this one.
With ``--encoded_by CODEC`` every variant is itself encoded and decoded by the codec: the
images the codec gives when its input is the perturbed image, as if stage two had taught its
encoder to see x_aug in x. Also reported: the share of each perturbation the codec lets
through, <decode(x_v) - decode(x), x_v - x> / <x_v - x, x_v - x> (mean over the images with a
perturbation; ``icm.codec.perturbation_share``).

Each difference to clean, and maa against each control, comes with a 95% paired bootstrap
interval over images (the same resampled images for both sides; group means are means over
the group's detectors within each resample). A perturbation transfers to the unseen
detectors only where ``maa - random`` of the unseen mean is above 0 with its interval; the
random-sign control is the weak one (faint iid noise alone costs fragile detectors many
points), so ``maa - smooth`` (a structured perturbation of the same size that costs nothing)
is reported beside it.
Also printed: the mean pairwise cosine of the detectors' input gradients (ground-truth
loss, per image), raw and after Gaussian smoothing, over the first ``--cosine_images``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from icm.aafg.engine import equal_size_batches, gt_targets
from icm.aafg.meta_aafg import augment_batch, max_linf_8bit, smooth_gradient
from icm.aafg.train import (
    add_algorithm_arguments,
    anchor_reconstruction,
    config_from_args,
)
from icm.ap_bootstrap import (
    bootstrap_weights,
    image_matches,
    map_from_matches,
    percentile_interval,
)
from icm.cli import (
    HelpFormatter,
    detector_weights,
    exit_on_user_error,
    key_value,
    non_negative_int,
    positive_int,
    resolve_device,
)
from icm.codec import compress_image, decompress_image, load_codec, perturbation_share
from icm.config import TOY_CONFIG, environment_info, load_yaml, to_plain
from icm.data import load_dataset
from icm.evaluation.engine import voc_ground_truth
from icm.evaluation.metrics import to_8bit
from icm.io import atomic_write_json, read_image_tensor

VARIANTS = ("clean", "maa", "random", "smooth", "noise")
COMPARISONS = (("maa", "clean"), ("random", "clean"), ("smooth", "clean"), ("maa", "random"), ("maa", "smooth"),
               ("noise", "clean"))
SMOOTH_CONTROL_SCALE = 8  # the smooth control's noise lives at 1/8 resolution


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meta_transfer.py", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--config", default=str(TOY_CONFIG),
                   help="YAML config naming the model sets and weights: meta_aafg.models (seen), "
                   "evaluation.unseen_detectors and evaluation.weights")
    p.add_argument("--dataset", default="toy", help="dataset name or folder")
    p.add_argument("--data_root", default=None, help="dataset root; None: the dataset config's")
    p.add_argument("--split", default="val", help="images the detectors were not trained on")
    p.add_argument("--seen", nargs="+", default=None, help="seen detectors; None: the config's model set")
    p.add_argument("--unseen", nargs="+", default=None,
                   help="unseen detectors; None: the config's evaluation.unseen_detectors")
    p.add_argument("--weights", type=key_value, action="append", default=[], metavar="NAME=PATH",
                   help="weights of a detector (repeatable); wins over the config's")
    p.add_argument("--limit", type=positive_int, default=100, help="N images of the split, from --start")
    p.add_argument("--start", type=non_negative_int, default=0,
                   help="index of the first image (another --start: a replicate on other images)")
    p.add_argument("--batch_size", type=positive_int, default=8, help="images per stage-one batch")
    p.add_argument("--seed", type=int, default=0, help="stage one's seed and the random controls'")
    p.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples")
    p.add_argument("--noise_level", type=non_negative_int, default=8, help="8-bit levels of the 'noise' variant's random signs")
    p.add_argument("--cosine_images", type=non_negative_int, default=24, help="images for the gradient cosines")
    p.add_argument("--cosine_smooth", type=positive_int, default=9,
                   help="Gaussian kernel (odd) for the smoothed cosines, sigma (K-1)/6")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--carried_by", default=None, metavar="CODEC",
                   help="a codec checkpoint: score each variant as this codec's decode of x plus the variant's "
                   "perturbation (a codec that carries all of it: the decoded ceiling); None: clean images")
    p.add_argument("--encoded_by", default=None, metavar="CODEC",
                   help="a codec checkpoint: score each variant as this codec's decode of the variant itself "
                   "(a codec fed the perturbed image); None: clean images")
    p.add_argument("--out", default=None, help="also write the result JSON (with the run's flags) here")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                   help="print one row per result file written by --out, and run nothing else")
    algorithm = p.add_argument_group("stage one (as MetaAAFG/train_meta_aafg.py; defaults are its defaults)")
    add_algorithm_arguments(algorithm)
    return p


def model_sets(args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, str | None]]:
    """(seen, unseen, weights) from the flags, else the config."""
    config = load_yaml(args.config) if args.config else {}
    stage_one, evaluation = config.get("meta_aafg") or {}, config.get("evaluation") or {}
    seen = args.seen or stage_one.get("models") or config.get("models")
    unseen = args.unseen or evaluation.get("unseen_detectors")
    seen = seen.split(",") if isinstance(seen, str) else list(seen or [])
    unseen = unseen.split(",") if isinstance(unseen, str) else list(unseen or [])
    if not seen or not unseen:
        raise ValueError("name the seen and unseen detectors (--seen, --unseen) or a --config that does")
    if set(seen) & set(unseen):
        raise ValueError(f"--seen and --unseen overlap: {sorted(set(seen) & set(unseen))}")
    configured = {**(evaluation.get("weights") or {}), **(stage_one.get("weights") or {})}
    # the config's weights of other models (e.g. the mask model) are not this run's to warn about
    weights = {**{k: v for k, v in configured.items() if k in seen + unseen}, **detector_weights(args.weights)}
    return seen, unseen, weights


# ----------------------------------------------------------------------------- controls


def mean_abs_levels(perturbed: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean |delta| per image in 8-bit levels: [B]."""
    return ((perturbed - clean) * 255).round().abs().flatten(1).mean(1)


def random_sign_control(clean: torch.Tensor, level: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x + s * m per pixel, s = +-1 at random and m = floor(level) or ceil(level) so that the
    mean |delta| of image i is ``level[i]`` in expectation; 8-bit, clipped to [0, 1]."""
    level = level.view(-1, 1, 1, 1)
    low = level.floor()
    magnitude = low + (torch.rand(clean.shape, generator=generator) < (level - low)).float()
    sign = torch.randint(0, 2, clean.shape, generator=generator).float() * 2 - 1
    return ((clean * 255).round() + sign * magnitude).clamp(0, 255) / 255


def smooth_control(clean: torch.Tensor, level: torch.Tensor, epsilon_levels: int,
                   generator: torch.Generator) -> torch.Tensor:
    """x + a smooth random field (Gaussian noise at 1/8 resolution, bilinear upsampling),
    clipped at +-``epsilon_levels`` and scaled (by bisection) so that image i's mean |delta|
    is ``level[i]``; 8-bit."""
    b, c, h, w = clean.shape
    low = torch.randn(b, c, math.ceil(h / SMOOTH_CONTROL_SCALE), math.ceil(w / SMOOTH_CONTROL_SCALE),
                      generator=generator)
    field = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    field = field / field.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)  # mean |field| = 1
    target = level.clamp(max=epsilon_levels).view(-1, 1, 1, 1)
    lo, hi = torch.zeros_like(target), torch.full_like(target, 1000.0 * epsilon_levels)
    for _ in range(60):  # mean |clip(s * field)| rises with s
        mid = (lo + hi) / 2
        too_small = (mid * field).clamp(-epsilon_levels, epsilon_levels).abs().flatten(1).mean(1).view(-1, 1, 1, 1) < target
        lo, hi = torch.where(too_small, mid, lo), torch.where(too_small, hi, mid)
    delta = (lo * field).clamp(-epsilon_levels, epsilon_levels).round()
    return ((clean * 255).round() + delta).clamp(0, 255) / 255


def carried(decoded: torch.Tensor, variant: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``decoded + (variant - clean)`` on the 8-bit grid, clipped to [0, 1]: the decode of a
    codec that adds the variant's whole perturbation to its reconstruction of x."""
    return (to_8bit(decoded) + to_8bit(variant) - to_8bit(clean)).clamp(0, 255) / 255


def decode_8bit(model, images: torch.Tensor) -> torch.Tensor:
    """Each image through ``model``'s real bitstream, decoded to 8-bit values in [0, 1]."""
    return torch.cat([to_8bit(decompress_image(model, compress_image(model, x[None]))) / 255 for x in images])


# ----------------------------------------------------------------------------- gradients


def gradient_cosines(detectors: dict, images: list[torch.Tensor], targets: list[dict],
                     smooth: int) -> dict[str, dict[str, float]]:
    """Mean over images of the cosine between two detectors' input gradients, for every pair:
    {"raw": {"a|b": cos}, "smoothed": {...}}."""
    sums: dict[str, dict[str, float]] = {"raw": {}, "smoothed": {}}
    for image, target in zip(images, targets):
        grads = {}
        for name, detector in detectors.items():
            x = image[None].detach().requires_grad_(True)
            loss = detector.loss(x, [target])
            grad = torch.autograd.grad(loss, x, allow_unused=True)[0] if loss.requires_grad else None
            grads[name] = torch.zeros_like(x) if grad is None else grad
        for kind in sums:
            g = grads if kind == "raw" else {n: smooth_gradient(v, smooth) for n, v in grads.items()}
            for a, b in combinations(detectors, 2):
                cos = F.cosine_similarity(g[a].flatten(), g[b].flatten(), dim=0, eps=1e-20).item()
                sums[kind][f"{a}|{b}"] = sums[kind].get(f"{a}|{b}", 0.0) + cos / len(images)
    return sums


def mean_cosine(pairs: dict[str, float], first: list[str], second: list[str]) -> float | None:
    """Mean cosine over the pairs with one detector in ``first`` and the other in ``second``."""
    values = [v for k, v in pairs.items()
              for a, b in [k.split("|")] if (a in first and b in second) or (b in first and a in second)]
    return float(np.mean(values)) if values else None


# ----------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    config = config_from_args(args)
    seen, unseen, weights = model_sets(args)
    codec = None if args.codec_aware is None else anchor_reconstruction(args.codec_aware, device)
    if args.carried_by is not None and args.encoded_by is not None:
        raise ValueError("--carried_by and --encoded_by: give one of them")
    view = "carried_by" if args.carried_by is not None else "encoded_by" if args.encoded_by is not None else None
    viewer = None
    if view is not None:
        if not Path(getattr(args, view)).is_file():
            raise ValueError(f"--{view} {getattr(args, view)}: no such codec checkpoint")
        viewer, _ = load_codec(getattr(args, view), device=device)
    full = load_dataset(args.dataset, split=args.split, root=args.data_root)
    dataset = dataclasses.replace(full, samples=full.samples[args.start : args.start + args.limit])
    if not dataset.samples:
        raise ValueError(f"--start {args.start}: the split {args.split!r} has {len(full)} images")
    from icm.detectors import build_detector_set

    detectors = build_detector_set(seen + unseen, weights, dataset.classes, str(device), flag="the seen and unseen sets")
    samples = [s for b in equal_size_batches(dataset.samples, args.batch_size) for s in b]
    generator = torch.Generator().manual_seed(args.seed)
    epsilon_levels = max_linf_8bit(config.epsilon)
    predictions = {v: {n: [] for n in detectors} for v in VARIANTS}
    levels = {v: [] for v in VARIANTS[1:]}
    passed = {v: [] for v in VARIANTS[1:]}  # --encoded_by: share of each perturbation let through
    start = time.perf_counter()
    bar = tqdm(total=len(samples), desc="transfer", unit="img", disable=args.no_progress)
    for batch in equal_size_batches(samples, args.batch_size):
        clean = torch.stack([read_image_tensor(s.image_path) for s in batch]).to(device)
        targets = [gt_targets(s, device) for s in batch]
        maa, _, _ = augment_batch(clean, targets, {n: detectors[n] for n in seen}, config,
                                  ids=[s.id for s in batch], seed=args.seed, codec=codec)
        level = mean_abs_levels(maa, clean).cpu()
        variants = {"clean": clean, "maa": maa,
                    "random": random_sign_control(clean.cpu(), level, generator).to(device),
                    "smooth": smooth_control(clean.cpu(), level, epsilon_levels, generator).to(device),
                    "noise": random_sign_control(clean.cpu(), torch.full_like(level, float(args.noise_level)),
                                                 generator).to(device)}
        if view == "carried_by":
            decoded = decode_8bit(viewer, clean)
            variants = {v: carried(decoded, images, clean) for v, images in variants.items()}
            clean = decoded  # the perturbations' sizes are measured against the decode
        elif view == "encoded_by":
            encoded = {v: decode_8bit(viewer, images) for v, images in variants.items()}
            for v in passed:
                passed[v] += perturbation_share(encoded[v] - encoded["clean"], variants[v] - variants["clean"]).tolist()
            variants, clean = encoded, encoded["clean"]
        for variant, images in variants.items():
            if variant != "clean":
                levels[variant] += mean_abs_levels(images, clean).tolist()
            for name, detector in detectors.items():
                predictions[variant][name] += [{k: v.cpu() for k, v in p.items()} for p in detector.predict(images)]
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - start

    ground_truth = voc_ground_truth(samples)
    matches = {v: {n: image_matches(ground_truth, predictions[v][n], len(dataset.classes), coco=False)
                   for n in detectors} for v in VARIANTS}
    weights_b = bootstrap_weights(len(samples), args.bootstrap, args.seed)
    full = {v: {n: float(map_from_matches(matches[v][n], "voc07")) for n in detectors} for v in VARIANTS}
    resampled = {v: {n: np.asarray(map_from_matches(matches[v][n], "voc07", weights_b)) for n in detectors}
                 for v in VARIANTS}
    groups = {"seen mean": seen, "unseen mean": unseen}
    for group, members in groups.items():
        for v in VARIANTS:
            full[v][group] = float(np.mean([full[v][n] for n in members]))
            resampled[v][group] = np.mean([resampled[v][n] for n in members], axis=0)
    rows = {}
    for name in [*detectors, *groups]:
        row = {"seen": name in seen or name == "seen mean", **{f"map_{v}": full[v][name] for v in VARIANTS}}
        for a, b in COMPARISONS:
            interval = percentile_interval(resampled[a][name] - resampled[b][name], full[a][name] - full[b][name])
            row[f"{a}-{b}"] = {"estimate": interval.estimate, "low": interval.low, "high": interval.high,
                               "dropped": interval.dropped}
        rows[name] = row

    cosine_samples = samples[: args.cosine_images]
    cosines = gradient_cosines(detectors, [read_image_tensor(s.image_path).to(device) for s in cosine_samples],
                               [gt_targets(s, device) for s in cosine_samples], args.cosine_smooth)
    cosine_summary = {kind: {"seen-unseen": mean_cosine(pairs, seen, unseen),
                             "seen-seen": mean_cosine(pairs, seen, seen),
                             "unseen-unseen": mean_cosine(pairs, unseen, unseen)}
                      for kind, pairs in cosines.items()}
    return {
        "dataset": dataset.name, "split": args.split, "images": len(samples), "image_ids": sorted(s.id for s in samples), "seen": seen, "unseen": unseen,
        "stage_one": {**vars(config), "codec_aware": args.codec_aware, "seed": args.seed},
        "carried_by": args.carried_by, "encoded_by": args.encoded_by,
        "share_passed": {v: float(np.nanmean(values)) for v, values in passed.items()} if view == "encoded_by" else None,
        "metric": "VOC07 11-point mAP@0.5", "bootstrap": args.bootstrap, "noise_level": args.noise_level, "confidence": 0.95,
        "mean_abs_delta_levels": {v: float(np.mean(values)) for v, values in levels.items()},
        "detectors": rows, "gradient_cosines": cosines, "gradient_cosine_means": cosine_summary,
        "cosine_images": len(cosine_samples), "cosine_smooth": args.cosine_smooth, "seconds": round(seconds, 1),
        "args": to_plain(vars(args)), "environment": environment_info(str(device)),
    }


def interval_cell(d: dict | None) -> str:
    """A difference and its interval in mAP points, e.g. ``+1.4 [+0.2, +2.1]`` (empty: none)."""
    return "" if d is None else f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def format_table(result: dict) -> str:
    """The result as a Markdown table (mAP in points, differences with their 95% interval)."""
    delta = result["mean_abs_delta_levels"]
    where = "clean images"
    if result.get("carried_by"):
        where = (f"decoded by {result['carried_by']}, each perturbation added to the decode (the ceiling of a codec "
                 "that carries it all)")
    elif result.get("encoded_by"):
        where = (f"each variant encoded and decoded by {result['encoded_by']}; share of its perturbation let "
                 "through: " + ", ".join(f"{v} {x:.3f}" for v, x in result["share_passed"].items()))
    lines = [f"{result['images']} {result['dataset']}/{result['split']} images ({where}), {result['metric']} in points, "
             f"95% paired bootstrap intervals ({result['bootstrap']} resamples). Mean |delta| in levels: "
             + ", ".join(f"{v} {x:.2f}" for v, x in delta.items()), "",
             "| detector | seen | clean | " + " | ".join(f"{a} - {b}" for a, b in COMPARISONS) + " |",
             "|---|---|---:|" + "---:|" * len(COMPARISONS)]
    for name, row in result["detectors"].items():
        lines.append(f"| {name} | {'yes' if row['seen'] else 'no'} | {100 * row['map_clean']:.1f} | "
                     + " | ".join(interval_cell(row[f"{a}-{b}"]) for a, b in COMPARISONS) + " |")
    means = result["gradient_cosine_means"]
    if not result["cosine_images"]:
        return "\n".join(lines)
    lines += ["", f"Input-gradient cosine (mean over {result['cosine_images']} images), raw / smoothed "
              f"({result['cosine_smooth']}x{result['cosine_smooth']} Gaussian): "
              + "; ".join(f"{k} {means['raw'][k]:.3f} / {means['smoothed'][k]:.3f}"
                          for k in means["raw"] if means["raw"][k] is not None)]
    return "\n".join(lines)


def summary_table(results: dict[str, dict]) -> str:
    """One row per result file (label -> result): mean |delta| and the seen and unseen means'
    changes, with their intervals (mAP points). Differences against a control that a file
    predates are left empty."""
    lines = ["| setting | mean \\|delta\\| | seen: maa - clean | unseen: maa - clean | unseen: random - clean "
             "| unseen: maa - random | unseen: maa - smooth | unseen: noise - clean |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, result in results.items():
        seen, unseen = result["detectors"]["seen mean"], result["detectors"]["unseen mean"]
        lines.append(f"| {label} | {result['mean_abs_delta_levels']['maa']:.2f} | {interval_cell(seen.get('maa-clean'))} | "
                     + " | ".join(interval_cell(unseen.get(k)) for k in ("maa-clean", "random-clean", "maa-random",
                                                              "maa-smooth", "noise-clean")) + " |")
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.summarize:  # python meta_transfer.py --summarize runs/transfer/*.json
        from icm.io import read_json

        results = {Path(path).stem: read_json(path) for path in args.summarize}
        print(summary_table({k: v for k, v in results.items() if "detectors" in v}))
        return results
    result = run(args)
    print(format_table(result))
    if args.out:
        atomic_write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
