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
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from icm.cli import exit_on_user_error, positive_int
from icm.codec import compress_image, decompress_image, load_codec
from icm.io import atomic_write_json, read_image_tensor
from icm.manifest import read_manifest_pairs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="delta_share.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = " (default: %(default)s)"
    p.add_argument("--augmented", required=True, help="stage one's output folder (images + manifest.jsonl)")
    p.add_argument("--codec", required=True, help="the fine-tuned codec checkpoint (e.g. MAA's last.pth.tar)")
    p.add_argument("--reference", required=True, help="the codec it is compared with (e.g. the control's)")
    p.add_argument("--limit", type=positive_int, default=64, help="first N pairs of the manifest" + d)
    p.add_argument("--out", default=None, help="also write the result JSON here" + d)
    return p


@torch.no_grad()
def delta_share(augmented: str | Path, codec: str | Path, reference: str | Path, limit: int = 64) -> dict:
    """Per-image shares and the summary (see the module docstring)."""
    model, _ = load_codec(codec)
    ref, _ = load_codec(reference)
    shares, delta_rms, ref_rms = [], [], []
    for pair in read_manifest_pairs(augmented)[:limit]:
        x = read_image_tensor(pair.original)[None]
        delta = (read_image_tensor(pair.augmented)[None] - x).flatten().double()
        y_ref = decompress_image(ref, compress_image(ref, x))
        moved = (decompress_image(model, compress_image(model, x)) - y_ref).flatten().double()
        energy = float(delta @ delta)
        if energy > 0:
            shares.append(float(moved @ delta) / energy)
        delta_rms.append(255 * float(delta.pow(2).mean().sqrt()))
        ref_rms.append(255 * float((y_ref - x).pow(2).mean().sqrt()))
    if not shares:
        raise ValueError(f"{augmented}: no image pair with a perturbation")
    mean, sd = float(np.mean(shares)), float(np.std(shares, ddof=1)) if len(shares) > 1 else 0.0
    return {"images": len(shares), "share_mean": mean, "share_sd": sd,
            "share_ci95": [mean - 1.96 * sd / np.sqrt(len(shares)), mean + 1.96 * sd / np.sqrt(len(shares))],
            "delta_rms_levels": float(np.mean(delta_rms)), "reference_error_rms_levels": float(np.mean(ref_rms)),
            "codec": str(codec), "reference": str(reference), "augmented": str(augmented)}


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    result = delta_share(args.augmented, args.codec, args.reference, args.limit)
    print(f"share of delta reproduced: {result['share_mean']:+.4f} [{result['share_ci95'][0]:+.4f}, "
          f"{result['share_ci95'][1]:+.4f}] over {result['images']} images; delta {result['delta_rms_levels']:.2f} "
          f"levels RMS, the reference's error {result['reference_error_rms_levels']:.2f}")
    if args.out:
        atomic_write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
