"""Per-image time of the rate-fidelity evaluation (real compress + decompress, bpp, PSNR,
MS-SSIM) against CompressAI's own ``compressai.utils.eval_model`` on the same model and
images. Target: ratio (ours / CompressAI) <= 1.0.

    python benchmarks/bench_evaluation.py                       # random-init zoo-size codec, CPU
    python benchmarks/bench_evaluation.py --images ~/kodak --device cuda --repeats 3

Both sides run alternately ``--repeats`` times on the same images; the median of the
per-image times is reported, with the bpp of both (they must be equal).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from icm.cli import resolve_device
from icm.codec import build_codec
from icm.data.folder import read_image_folder
from icm.evaluation.engine import evaluate_codec
from icm.evaluation.image_codecs import LearnedCodec
from icm.io import atomic_write_json, list_images


def synthetic_images(folder: Path, count: int, height: int, width: int) -> None:
    """Smooth gradients with texture and edges (compressible like photos, unlike noise)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = 120 + 80 * np.sin(xx / (20 + 5 * i)) * np.cos(yy / 30)
        img = np.stack([base, base * 0.8 + 30, 255 - base], -1) + rng.normal(0, 6, (height, width, 3))
        img[height // 4 : height // 2, width // 3 : width // 2] = rng.integers(0, 255, 3)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", default=None, help="image folder (default: synthetic images)")
    p.add_argument("--count", type=int, default=4, help="synthetic images")
    p.add_argument("--size", type=int, nargs=2, default=[256, 384], metavar=("H", "W"), help="synthetic size")
    p.add_argument("--backbone", default="bmshj2018-hyperprior")
    p.add_argument("--quality", type=int, default=3, help="zoo channel sizes of this quality (random init)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for both sides")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)

    from compressai.utils.eval_model.__main__ import eval_model  # sets 1 thread on import

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.images) if args.images else Path(tmp)
        if not args.images:
            synthetic_images(folder, args.count, *args.size)
        paths = list_images(folder)
        dataset = read_image_folder(folder)
        torch.manual_seed(0)
        model = build_codec(args.backbone, args.quality, pretrained=False).to(device).eval()
        model.update(force=True)
        codec = LearnedCodec(model, "bench", args.quality)

        ours_times, theirs_times = [], []
        ours = theirs = None
        evaluate_codec(codec, dataset, device=device, progress=False)  # warm-up (allocations, CDF tables)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ours = evaluate_codec(codec, dataset, device=device, progress=False)["results"]
            ours_times.append((time.perf_counter() - t0) / len(paths))
            t0 = time.perf_counter()
            theirs = eval_model(model, "", folder, paths, architecture=args.backbone, half=False, per_image=False)
            theirs_times.append((time.perf_counter() - t0) / len(paths))

    result = {
        "device": str(device), "threads": args.threads, "images": len(paths),
        "image_size": list(args.size) if not args.images else None,
        "model": f"{args.backbone} (quality {args.quality} sizes, random init)",
        "ours_s_per_image": statistics.median(ours_times),
        "compressai_s_per_image": statistics.median(theirs_times),
        "ours_runs": ours_times, "compressai_runs": theirs_times,
        "bpp": {"ours": ours["bpp"], "compressai": theirs["bpp"]},
        "psnr": {"ours": ours["psnr-rgb"], "compressai": theirs["psnr-rgb"]},
    }
    result["ratio"] = result["ours_s_per_image"] / result["compressai_s_per_image"]
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    if abs(ours["bpp"] - theirs["bpp"]) > 1e-9:
        print("error: bpp differs from CompressAI's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
