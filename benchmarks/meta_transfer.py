"""Does the meta split transfer? Loss change of UNSEEN detectors, --meta on vs --meta off.

    python benchmarks/meta_transfer.py --seen toy_yolov3,toy_faster_rcnn,toy_centernet \\
        --unseen toy_yolov8,toy_ssdlite --weights toy_yolov3=PATH ... --limit 64

Both modes perturb the same toy images against the seen set with the same number of
gradient evaluations (meta off = ensemble PGD, see MetaAAFG/meta_aafg.py); then every
detector, seen and unseen, is scored on the clean and the augmented images with the
ground-truth loss. Printed: mean loss before, after, and the change, per mode and detector
(helpful direction: more negative is better). Trained detectors are needed for the number
to mean anything: pass their checkpoints with --weights or rely on the toy config's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere, uninstalled

from icm.cli import fraction, key_value  # noqa: E402
from icm.config import CONFIG_DIR, load_yaml  # noqa: E402
from icm.data import load_dataset  # noqa: E402
from icm.detectors import build_detector  # noqa: E402
from icm.io import read_image_tensor  # noqa: E402
from MetaAAFG.engine import equal_size_batches, gt_targets  # noqa: E402
from MetaAAFG.meta_aafg import MetaAAFGConfig, augment_batch, per_image_losses  # noqa: E402


def toy_config_value(key: str):
    path = CONFIG_DIR / "toy.yaml"
    if not path.is_file():
        return None
    data = load_yaml(path)
    return (data.get("meta_aafg") or {}).get(key, data.get(key))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="toy")
    p.add_argument("--data_root", default=None, help="dataset root (default: the dataset config's)")
    p.add_argument("--split", default="val")
    p.add_argument("--seen", default=None, help="comma list (default: the toy config's model set)")
    p.add_argument("--unseen", required=True, help="comma list of detectors not in --seen")
    p.add_argument("--weights", type=key_value, action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--epsilon", type=fraction, default="8/255")
    p.add_argument("--meta_steps", type=int, default=10)
    p.add_argument("--inner_steps", type=int, default=5)
    p.add_argument("--direction", choices=["helpful", "harmful"], default="helpful")
    p.add_argument("--out", default=None, help="also write the result JSON here")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    seen = (args.seen or toy_config_value("models") or "").split(",")
    unseen = args.unseen.split(",")
    if not seen[0] or set(seen) & set(unseen):
        raise SystemExit("--seen must be given (or the toy config must name models) and not overlap --unseen")
    dataset = load_dataset(args.dataset, split=args.split, root=args.data_root)
    weights = dict(args.weights)
    config_weights = toy_config_value("weights")
    if isinstance(config_weights, dict):
        weights = {**config_weights, **weights}
    detectors = {
        n: build_detector(n, classes=dataset.classes, weights=weights.get(n, "default")) for n in seen + unseen
    }
    samples = dataset.samples[: args.limit]

    result: dict = {"seen": seen, "unseen": unseen, "images": len(samples), "epsilon": args.epsilon,
                    "direction": args.direction, "modes": {}}
    for mode in ("on", "off"):
        config = MetaAAFGConfig(epsilon=args.epsilon, meta_steps=args.meta_steps, inner_steps=args.inner_steps,
                                direction=args.direction, meta=mode == "on")
        before = {n: [] for n in detectors}
        after = {n: [] for n in detectors}
        start = time.perf_counter()
        for batch in equal_size_batches(samples, args.batch_size):
            images = torch.stack([read_image_tensor(s.image_path) for s in batch])
            targets = [gt_targets(s, images.device) for s in batch]
            torch.manual_seed(0)
            augmented, _, _ = augment_batch(images, targets, {n: detectors[n] for n in seen}, config)
            all_targets = {n: targets for n in detectors}
            for name, values in per_image_losses(detectors, images, all_targets, config).items():
                before[name] += values.tolist()
            for name, values in per_image_losses(detectors, augmented, all_targets, config).items():
                after[name] += values.tolist()
        rows = {}
        for name in detectors:
            b, a = sum(before[name]) / len(before[name]), sum(after[name]) / len(after[name])
            rows[name] = {"seen": name in seen, "loss_before": b, "loss_after": a, "change": a - b,
                          "relative_change": (a - b) / b if b else None}
        result["modes"][mode] = {"seconds": time.perf_counter() - start, "detectors": rows}

    print(f"{'detector':<22}{'seen':>6}{'before':>10}{'meta on':>10}{'meta off':>10}{'on-off':>10}")
    for name in detectors:
        on, off = result["modes"]["on"]["detectors"][name], result["modes"]["off"]["detectors"][name]
        print(f"{name:<22}{'yes' if on['seen'] else 'no':>6}{on['loss_before']:>10.4g}"
              f"{on['change']:>+10.3g}{off['change']:>+10.3g}{on['change'] - off['change']:>+10.3g}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
