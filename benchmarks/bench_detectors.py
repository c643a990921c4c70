"""Detector speed: loss forward + backward to the input pixels, per registered detector.

    python benchmarks/bench_detectors.py                       # every registered detector
    python benchmarks/bench_detectors.py --models toy_yolov8,toy_faster_rcnn --batch 4 --size 128

Random weights (speed does not depend on training), COCO heads for zoo architectures and
3 classes for toy ones, one ground-truth box per image. Each network runs at the benchmark
size (ultralytics ``imgsz``, torchvision ``min_size``/``max_size``), except SSD300 and
SSDlite, which keep their fixed 300/320 input. Reported: median wall seconds per batch over
``--repeats`` runs after one warm-up, the CPU seconds of the process for the same runs
(on a shared machine wall time inflates, CPU time much less), images per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from icm.cli import exit_on_user_error, resolve_device
from icm.detectors import available, build_detector

TOY_CLASSES = ["circle", "square", "triangle"]


def size_kwargs(name: str, size: int) -> dict:
    """Build options that run ``name`` at ``size`` px (see the module docstring)."""
    if name in ("ssd300", "ssdlite"):
        return {}
    from icm.detectors.torchvision_family import SPECS as TV
    from icm.detectors.ultralytics_family import SPECS as ULTRA

    if name in ULTRA:
        return {"imgsz": size}
    if name in TV:
        return {"min_size": size, "max_size": size}
    return {}


def time_forward_backward(name: str, batch: int, size: int, repeats: int, device: torch.device) -> dict:
    """Median wall and CPU seconds of ``loss`` + ``autograd.grad`` w.r.t. a batch of images."""
    classes = TOY_CLASSES if name.startswith("toy_") else None
    detector = build_detector(name, classes=classes, weights=None, device=device, **size_kwargs(name, size))
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=gen).to(device)
    box = torch.tensor([[0.2, 0.25, 0.7, 0.8]]) * size
    targets = [{"boxes": box.clone(), "labels": torch.tensor([i % len(detector.classes)])} for i in range(batch)]
    wall, cpu = [], []
    for i in range(repeats + 1):
        x = images.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        w0, c0 = time.perf_counter(), time.process_time()
        (grad,) = torch.autograd.grad(detector.loss(x, targets), x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > 0:  # the first run warms up
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        if not torch.isfinite(grad).all():
            raise RuntimeError(f"{name}: non-finite input gradient")
    seconds = statistics.median(wall)
    return {
        "name": name,
        "family": detector.family,
        "params_m": sum(p.numel() for p in detector.parameters()) / 1e6,
        "seconds": seconds,
        "cpu_seconds": statistics.median(cpu),
        "images_per_s": batch / seconds,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default="all", help="comma-separated registered names, or 'all'")
    parser.add_argument("--batch", type=int, default=4, help="images per batch")
    parser.add_argument("--size", type=int, default=128, help="square image size in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = available() if args.models == "all" else [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in available()]
    if unknown:
        raise KeyError(f"unknown detector(s) {', '.join(unknown)}; available: {', '.join(available())}")
    print(f"loss forward+backward to the input, batch {args.batch}, {args.size} px, {device}, {args.threads} threads")
    print(f"{'detector':<18}{'family':<13}{'params M':>9}{'s/batch':>9}{'cpu s':>8}{'img/s':>8}")
    rows = []
    for name in names:
        row = time_forward_backward(name, args.batch, args.size, args.repeats, device)
        rows.append(row)
        print(
            f"{name:<18}{row['family']:<13}{row['params_m']:>9.2f}{row['seconds']:>9.3f}"
            f"{row['cpu_seconds']:>8.2f}{row['images_per_s']:>8.1f}",
            flush=True,
        )
    if args.json is not None:
        from icm.io import atomic_write_json

        atomic_write_json(args.json, {"batch": args.batch, "size": args.size, "device": str(device), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
