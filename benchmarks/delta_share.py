"""How much of stage one's perturbation did stage two's codec learn to add?

    python benchmarks/delta_share.py --augmented runs/maa_ablation/stage_one/defaults \\
        --codec runs/maa_ablation/codecs/defaults_q2/last.pth.tar \\
        --reference runs/maa_ablation/codecs/control_q2/last.pth.tar --out share.json

For each image pair (x, x_aug) of a stage-one folder, both codecs encode x (real
bitstreams) and the difference of their decodes is projected on delta = x_aug - x:

    share = <decode_codec(x) - decode_reference(x), delta> / <delta, delta>

With the beta = 0 control as the reference, share is the part of the perturbation the MAA
fine-tune reproduces: 1 would be all of it, 0 none. Also reported: the RMS of delta and of
the reference's error against x (8-bit levels), which bound what a codec at that rate can
carry. The images are stage two's own training images, so this is an upper bound of what
reaches unseen images.

How much of delta can any codec learn? A codec computes a deterministic function of x, so
it can learn at most the part of delta that stage one would give again: E[delta | x]. With
``--replicate FOLDER`` (stage one run again on the same images with another ``--seed``), the
share of delta that the replicate's delta reproduces,

    reproducible = <delta_replicate, delta> / <delta, delta>,

estimates |E[delta | x]|^2 / |delta|^2 where the two runs differ by independent seed-driven
parts: the ceiling of ``share`` that a perfect stage two would reach. ``--codec`` and
``--reference`` may then be left out.

    python benchmarks/delta_share.py --augmented runs/seed0 --replicate runs/seed1 --limit 64
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icm.cli import HelpFormatter, exit_on_user_error, positive_int
from icm.codec import compress_image, decompress_image, load_codec, perturbation_share
from icm.io import atomic_write_json, read_image_tensor
from icm.manifest import read_manifest_pairs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="delta_share.py", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--augmented", required=True, help="stage one's output folder (images + manifest.jsonl)")
    p.add_argument("--codec", default=None, help="the fine-tuned codec checkpoint (e.g. MAA's last.pth.tar)")
    p.add_argument("--reference", default=None, help="the codec it is compared with (e.g. the control's)")
    p.add_argument("--replicate", default=None,
                   help="stage one's output for the same images with another --seed: report the reproducible "
                   "share of delta")
    p.add_argument("--limit", type=positive_int, default=64, help="first N pairs of the manifest")
    p.add_argument("--out", default=None, help="also write the result JSON here")
    return p


def mean_sd_ci95(values: list[float]) -> tuple[float, float, list[float]]:
    """Mean, standard deviation and the normal 95% interval of the mean over images."""
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    half = 1.96 * sd / float(np.sqrt(len(values)))
    return mean, sd, [mean - half, mean + half]


@torch.no_grad()
def delta_share(augmented: str | Path, codec: str | Path, reference: str | Path, limit: int = 64) -> dict:
    """Per-image shares and the summary (see the module docstring)."""
    model, _ = load_codec(codec)
    ref, _ = load_codec(reference)
    shares, delta_rms, ref_rms = [], [], []
    for pair in read_manifest_pairs(augmented)[:limit]:
        x = read_image_tensor(pair.original)[None]
        delta = read_image_tensor(pair.augmented)[None] - x
        y_ref = decompress_image(ref, compress_image(ref, x))
        moved = decompress_image(model, compress_image(model, x)) - y_ref
        share = float(perturbation_share(moved, delta))
        if not math.isnan(share):  # an image without perturbation has no share
            shares.append(share)
        delta_rms.append(255 * float(delta.pow(2).mean().sqrt()))
        ref_rms.append(255 * float((y_ref - x).pow(2).mean().sqrt()))
    if not shares:
        raise ValueError(f"{augmented}: no image pair with a perturbation")
    mean, sd, ci95 = mean_sd_ci95(shares)
    return {"images": len(shares), "share_mean": mean, "share_sd": sd, "share_ci95": ci95,
            "delta_rms_levels": float(np.mean(delta_rms)), "reference_error_rms_levels": float(np.mean(ref_rms)),
            "codec": str(codec), "reference": str(reference), "augmented": str(augmented)}


def reproducible_share(augmented: str | Path, replicate: str | Path, limit: int = 64) -> dict:
    """Per image of ``augmented`` (first ``limit`` of its manifest) also in ``replicate``:
    <delta_replicate, delta> / <delta, delta> and the cosine of the two deltas."""
    others = {pair.id: pair for pair in read_manifest_pairs(replicate)}
    shares, cosines, missing = [], [], 0
    for pair in read_manifest_pairs(augmented)[:limit]:
        other = others.get(pair.id)
        if other is None:
            missing += 1
            continue
        x = read_image_tensor(pair.original)[None]
        x_rep = read_image_tensor(other.augmented)[None]
        if x_rep.shape != x.shape:
            raise ValueError(f"{replicate}: image {pair.id} differs in size from {augmented}'s")
        delta = read_image_tensor(pair.augmented)[None] - x
        delta_rep = x_rep - x
        share = float(perturbation_share(delta_rep, delta))
        if not math.isnan(share):
            shares.append(share)
            cosines.append(float(F.cosine_similarity(delta.flatten().double(), delta_rep.flatten().double(), dim=0)))
    if not shares:
        raise ValueError(f"{replicate}: no image of {augmented} with a perturbation in both folders")
    if missing:
        warnings.warn(f"{replicate}: {missing} of the first {limit} images of {augmented} are not in it; left out", stacklevel=2)
    mean, _, ci95 = mean_sd_ci95(shares)
    return {"images": len(shares), "missing": missing, "reproducible_mean": mean,
            "reproducible_ci95": ci95, "cosine_mean": float(np.mean(cosines)),
            "replicate": str(replicate)}


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if (args.codec is None) != (args.reference is None):
        raise ValueError("--codec and --reference: give both (or neither, with --replicate)")
    if args.codec is None and args.replicate is None:
        raise ValueError("nothing to measure: give --codec and --reference, or --replicate")
    result: dict = {"augmented": str(args.augmented)}
    if args.codec is not None:
        result = delta_share(args.augmented, args.codec, args.reference, args.limit)
        print(f"share of delta reproduced: {result['share_mean']:+.4f} [{result['share_ci95'][0]:+.4f}, "
              f"{result['share_ci95'][1]:+.4f}] over {result['images']} images; delta "
              f"{result['delta_rms_levels']:.2f} levels RMS, the reference's error "
              f"{result['reference_error_rms_levels']:.2f}")
    if args.replicate is not None:
        rep = result["replicate"] = reproducible_share(args.augmented, args.replicate, args.limit)
        print(f"share of delta a replicate reproduces (the ceiling of a deterministic codec): "
              f"{rep['reproducible_mean']:+.4f} [{rep['reproducible_ci95'][0]:+.4f}, "
              f"{rep['reproducible_ci95'][1]:+.4f}] over {rep['images']} images; cosine {rep['cosine_mean']:+.4f}")
    if args.out:
        atomic_write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
