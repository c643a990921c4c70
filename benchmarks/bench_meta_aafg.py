"""Stage-one speed: Meta-AAFG overhead ratio and images/s.

    python benchmarks/bench_meta_aafg.py --models toy_yolov8,toy_faster_rcnn,centernet_small

overhead ratio = wall time per batch / (gradient evaluations per batch x mean single-model
forward+backward time at the same batch and size). 1.0 would mean the algorithm costs
nothing beyond its detector passes; the rest is the per-image losses before/after (2 x B
forward passes per model), normalisation, sign, projection and Python. A second ratio
weights each model's time by how many gradients the schedule takes of it (the exact mix).
Detectors use random weights (speed does not depend on training). Target: <= 1.15 on CPU.
Both clocks are reported: wall time (the definition) and this process's CPU time, which is
the one to trust on a shared machine where other jobs stretch wall time unevenly. Use one
thread there (the default): idle OpenMP threads spin, which inflates CPU time unevenly too.

``--mixed_sizes 128x160,160x128,...`` measures batching of images of different sizes instead:

    python benchmarks/bench_meta_aafg.py --mixed_sizes 128x160,160x128,144x144,128x128 --mixed_batches 1,4,8

For each batch size B it augments the same images (the sizes in turn, ``--mixed_images`` of
them) in batches of B, sorted as stage one sorts them, and reports images/s, the gradient
passes per second (one model, one image) against the model set's own forward+backward speed
at that batch on those images (the limit: ratio 1), and how far each image's result is from
its batch-1 result (the share of 8-bit values that differ, and the largest difference).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

import icm.aafg.meta_aafg as meta_aafg
from icm.aafg.meta_aafg import MetaAAFGConfig, augment_batch, gradient_budget
from icm.cli import HelpFormatter
from icm.detectors import available, build_detector

CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]


def synthetic_batch(batch: int, size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = (torch.randint(0, 256, (batch, 3, size, size), generator=gen).float() / 255).to(DEVICE)
    box = torch.tensor([[size * 0.2, size * 0.25, size * 0.7, size * 0.8]], device=DEVICE)
    targets = [{"boxes": box.clone(), "labels": torch.tensor([i % len(CLASSES)])} for i in range(batch)]
    return images, targets


DEVICE = torch.device("cpu")


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``. CPU time is what to trust on a
    shared machine: other processes stretch wall time but not this process's CPU time. On
    CUDA the device is synchronised around ``fn`` and wall time is the one to read."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter() - wall, time.process_time() - cpu


def host_syncs(fn) -> int | None:
    """How many times ``fn()`` makes the host wait for the GPU (torch's sync debug mode counts
    each synchronising call: .item(), nonzero, boolean indexing, blocking copies); None on CPU."""
    if DEVICE.type != "cuda":
        return None
    import warnings

    torch.cuda.synchronize(DEVICE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def forward_backward(detector, images, targets) -> None:
    """One loss forward + one autograd.grad w.r.t. the images (a batch tensor, or a list of
    any sizes): what one gradient costs."""
    if isinstance(images, torch.Tensor):
        x = images.clone().requires_grad_(True)
        torch.autograd.grad(detector.loss(x, targets), x)
    else:
        xs = [img.clone().requires_grad_(True) for img in images]
        torch.autograd.grad(detector.loss(xs, targets), xs)


def time_gradients_in_loop(clock: dict) -> None:
    """Wrap meta_aafg's per-model gradient so its CPU time inside augment_batch is summed in
    ``clock["s"]``: the in-loop share of detector passes, measured at the same moment as the
    batch and so immune to the load changes that make the ratio above noisy."""
    inner = meta_aafg._Run.gradient

    def timed_gradient(*args, **kwargs):
        start = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            clock["s"] += time.process_time() - start

    meta_aafg._Run.gradient = timed_gradient


def gradients_per_model(names: list[str], config: MetaAAFGConfig) -> Counter:
    """How many gradients of each model one batch takes (the schedule of meta_aafg.py)."""
    counts: Counter = Counter()
    if not config.meta:
        budget = gradient_budget(config, len(names))
        for j in range(budget):
            counts[names[j % len(names)]] += 1
        return counts
    for t in range(config.meta_steps):
        held_out = names[t % len(names)]
        for name in [n for n in names if n != held_out] or names:
            counts[name] += config.inner_steps
        counts[held_out] += 1
    return counts


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"128x160,160x128"`` -> [(128, 160), (160, 128)] (height x width)."""
    try:
        sizes = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW,HxW,... got {text!r}") from None
    if not sizes or any(len(size) != 2 or min(size) < 8 for size in sizes):
        raise argparse.ArgumentTypeError(f"expected HxW,HxW,... with sides of at least 8, got {text!r}")
    return sizes


def mixed_size_batching(detectors: dict, config: MetaAAFGConfig, sizes: list[tuple[int, int]],
                        num_images: int, batch_sizes: list[int]) -> dict:
    """Images/s, gradient passes/s against the model set's forward+backward speed, and the
    difference from batch 1, per batch size, on images of the sizes ``sizes`` in turn."""
    from icm.aafg.engine import similar_size_batches
    from icm.data.records import DetectionSample

    gen = torch.Generator().manual_seed(0)
    images, targets, samples = [], [], []
    for i in range(num_images):
        h, w = sizes[i % len(sizes)]
        images.append((torch.randint(0, 256, (3, h, w), generator=gen).float() / 255).to(DEVICE))
        box = torch.tensor([[w * 0.2, h * 0.25, w * 0.7, h * 0.8]])
        targets.append({"boxes": box, "labels": torch.tensor([i % len(CLASSES)])})
        samples.append(DetectionSample(id=str(i), image_path="", width=w, height=h))
    results, reference = {}, None
    for batch in batch_sizes:
        order = [[int(s.id) for s in b] for b in similar_size_batches(samples, batch)]
        out: dict[int, torch.Tensor] = {}
        counter: Counter = Counter()

        def run_all(order=order, out=out, counter=counter):
            for rows in order:
                augmented, _, _ = augment_batch([images[i] for i in rows], [targets[i] for i in rows], detectors,
                                                config, counter=counter, ids=[str(i) for i in rows])
                out.update(zip(rows, augmented))

        wall, cpu = timed(run_all)
        # The model set's forward+backward on the same batches, once per model, under the same
        # autocast; the clock to read is CPU time on a CPU, wall time on a GPU.
        clock = 0 if DEVICE.type == "cuda" else 1
        limit_time = 0.0
        for rows in order:
            for d in detectors.values():
                with meta_aafg._forward_context(images[rows[0]], config):
                    limit_time += timed(lambda d=d, rows=rows: forward_backward(
                        d, [images[i] for i in rows], [targets[i] for i in rows]))[clock]
        passes = counter["gradient_evaluations"]
        row = {"images_per_second_wall": num_images / wall, "images_per_second_cpu": num_images / cpu,
               "gradient_passes_per_wall_second": passes / wall, "gradient_passes_per_cpu_second": passes / cpu,
               "model_set_passes_per_second": num_images * len(detectors) / limit_time,
               "clock": "wall" if clock == 0 else "cpu"}
        row["share_of_the_limit"] = (passes / (wall, cpu)[clock]) / row["model_set_passes_per_second"]
        if reference is None:
            reference = out
        levels = [((out[i] - reference[i]) * 255).round().abs() for i in range(num_images)]
        row["share_of_values_differing_from_batch_1"] = sum(int((v > 0).sum()) for v in levels) / sum(
            v.numel() for v in levels)
        row["largest_difference_from_batch_1_levels"] = max(float(v.max()) for v in levels)
        results[str(batch)] = row
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--models", default=None, help="comma list; None: the small toy-sized models available")
    p.add_argument("--batch", type=int, default=4, help="images per augment_batch call")
    p.add_argument("--size", type=int, default=128, help="square image side, pixels")
    p.add_argument("--meta_steps", type=int, default=10, help="T")
    p.add_argument("--inner_steps", type=int, default=5, help="K")
    p.add_argument("--meta", choices=["on", "off"], default="on", help="off: ensemble PGD, same budget")
    p.add_argument("--batches", type=int, default=2, help="rounds: timed batches of augment_batch")
    p.add_argument("--repeats", type=int, default=3, help="timed forward+backward passes per model per round")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is comparable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (scripts/gpu_check.sh)")
    p.add_argument("--autocast", choices=["bf16", "off"], default="bf16", help="detector forwards on CUDA")
    p.add_argument("--channels_last", choices=["on", "off"], default="off", help="detector weights in channels_last")
    p.add_argument("--mixed_sizes", type=parse_sizes, default=None, metavar="HxW,...",
                   help="measure batching of mixed sizes on these image sizes instead (see above)")
    p.add_argument("--mixed_images", type=int, default=8, help="images per batch-size run of --mixed_sizes")
    p.add_argument("--mixed_batches", default="1,4,8", help="batch sizes of --mixed_sizes, the first the reference")
    p.add_argument("--out", default=None, help="also write the result JSON here")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.models:
        names = args.models.split(",")
    else:
        small = ["toy_yolov8", "toy_yolov3", "toy_faster_rcnn", "toy_centernet", "centernet_small"]
        names = [n for n in small if n in available()][:3]
    if not names:
        raise SystemExit(f"no small detector registered; pass --models (available: {available()})")
    detectors = {n: build_detector(n, classes=CLASSES, num_classes=len(CLASSES), weights=None, device=str(DEVICE))
                 for n in names}
    if args.channels_last == "on":
        for d in detectors.values():
            d.to(memory_format=torch.channels_last)
    config = MetaAAFGConfig(meta_steps=args.meta_steps, inner_steps=args.inner_steps, meta=args.meta == "on",
                            autocast=args.autocast == "bf16")
    if args.mixed_sizes:
        batch_sizes = [int(b) for b in args.mixed_batches.split(",")]
        result = {"models": names, "sizes": [f"{h}x{w}" for h, w in args.mixed_sizes], "images": args.mixed_images,
                  "meta_steps": args.meta_steps, "inner_steps": args.inner_steps, "threads": args.threads,
                  "device": str(DEVICE), "torch": torch.__version__, "channels_last": args.channels_last,
                  "by_batch_size": mixed_size_batching(detectors, config, args.mixed_sizes, args.mixed_images,
                                                       batch_sizes)}
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return result
    images, targets = synthetic_batch(args.batch, args.size)

    budget = gradient_budget(config, len(names))
    counts = gradients_per_model(names, config)

    # Warm up, then alternate single-model passes and whole batches so that both see the same
    # machine load; medians over rounds.
    for d in detectors.values():
        forward_backward(d, images, targets)
    single: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    batches: list[tuple[float, float]] = []
    in_loop = {"s": 0.0}
    time_gradients_in_loop(in_loop)
    for _ in range(args.batches):
        for n, d in detectors.items():
            for _ in range(args.repeats):
                single[n].append(timed(lambda d=d: forward_backward(d, images, targets)))
        counter: Counter = Counter()
        batches.append(timed(lambda c=counter: augment_batch(images, targets, detectors, config, counter=c)))
        assert counter["gradient_evaluations"] == budget * args.batch  # the budget is per image

    result = {"models": names, "batch": args.batch, "size": args.size, "meta": args.meta,
              "meta_steps": args.meta_steps, "inner_steps": args.inner_steps, "threads": args.threads,
              "gradient_evaluations_per_image": budget, "device": str(DEVICE), "torch": torch.__version__,
              "channels_last": args.channels_last}
    for k, clock in enumerate(("wall", "cpu")):
        per_model = {n: statistics.median(t[k] for t in single[n]) for n in names}
        per_batch = statistics.median(t[k] for t in batches)
        result[clock] = {
            "single_model_forward_backward_s": per_model,
            "per_batch_s": per_batch,
            "per_image_s": per_batch / args.batch,
            "images_per_second": args.batch / per_batch,
            "overhead_ratio": per_batch / (budget * statistics.mean(per_model.values())),
            "overhead_ratio_exact_mix": per_batch / sum(counts[n] * per_model[n] for n in names),
        }
    # CPU time of whole batches / CPU time of the detector passes inside them.
    result["cpu"]["overhead_ratio_in_loop"] = sum(t[1] for t in batches) / in_loop["s"]
    # Host synchronisations of one gradient pass per model: the detectors' own (ours are none
    # in the loop); on CUDA only.
    result["host_syncs_per_gradient_pass"] = {
        n: host_syncs(lambda d=d: forward_backward(d, images, targets)) for n, d in detectors.items()}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
