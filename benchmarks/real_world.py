"""Stage one on real photographs with a real detector: what the perturbation does for the
detector it was made with, on the photo and after JPEG (the real-world check's second part).

    bash benchmarks/real_world.sh        # fetches, runs stage one and evaluation, then this
    python benchmarks/real_world.py --augmented runs/real_world/aafg --out runs/real_world

The photos have no labels: the ground truth is the detector's own detections of score >=
``--pseudo_score`` on each clean photo (pseudo ground truth). Clean mAP is then about 1 by
construction, so two other measurements:

- the detector's mean score on its pseudo ground-truth boxes (per box, the best score of a
  same-class detection with IoU >= 0.5; 0 if none), on x and on x_aug;
- mAP@0.5 (VOC07) of JPEG-compressed x_aug and of JPEG-compressed x at each quality, against
  the clean pseudo ground truth, with the bytes each costs.

Differences come with 95% paired bootstrap intervals over photos (a dozen photos: wide).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from icm.ap_bootstrap import bootstrap_weights, image_matches, map_from_matches, percentile_interval
from icm.cli import positive_int, probability
from icm.evaluation.image_codecs import PillowCodec
from icm.io import read_image_tensor
from icm.manifest import read_manifest_pairs

REPO = Path(__file__).resolve().parent.parent


def score_on_boxes(pred: dict, truth: dict) -> np.ndarray:
    """Per pseudo ground-truth box, the best score of a same-class prediction with IoU >= 0.5."""
    from torchvision.ops import box_iou

    boxes = torch.as_tensor(truth["boxes"], dtype=torch.float32).reshape(-1, 4)
    if not len(boxes):
        return np.zeros(0)
    if not len(pred["boxes"]):
        return np.zeros(len(boxes))
    iou = box_iou(boxes, pred["boxes"].float().cpu())
    same = torch.as_tensor(truth["labels"])[:, None] == pred["labels"].cpu()[None, :]
    scores = pred["scores"].float().cpu()[None, :].expand_as(iou)
    hit = (iou >= 0.5) & same
    return torch.where(hit, scores, torch.zeros_like(scores)).amax(1).numpy()


def jpeg(image: torch.Tensor, quality: int) -> tuple[torch.Tensor, int]:
    codec = PillowCodec("jpeg", quality)
    payload, num_bytes = codec.encode(image[None])
    return codec.decode(payload)[0], int(num_bytes)


def interval_dict(values: np.ndarray, estimate: float) -> dict:
    ci = percentile_interval(values, estimate)
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--augmented", required=True, help="stage one's output folder on the photos")
    p.add_argument("--detector", default="yolov3-tiny", help="the detector stage one used")
    p.add_argument("--weights", default=str(REPO / "data/real/yolov3-tiny.weights"), help="its weights")
    p.add_argument("--pseudo_score", type=probability, default=0.5, help="score threshold of the pseudo ground truth")
    p.add_argument("--jpeg", default="3,5,7,10,20", help="JPEG qualities (low ones: at 10 and above YOLOv3-tiny keeps all of its few pseudo boxes)")
    p.add_argument("--resamples", type=positive_int, default=2000, help="bootstrap resamples over photos")
    p.add_argument("--out", default="runs/real_world", help="folder for stage_one.json and stage_one.md")
    args = p.parse_args(argv)
    from icm.detectors import build_detector

    detector = build_detector(args.detector, weights=args.weights)
    pairs = sorted(read_manifest_pairs(args.augmented), key=lambda pair: pair.id)
    if not pairs:
        raise SystemExit(f"error: {args.augmented}: no stage-one images")
    ids = [pair.id for pair in pairs]
    clean = [read_image_tensor(pair.original) for pair in pairs]
    augmented = [read_image_tensor(pair.augmented) for pair in pairs]
    truth = []
    predictions = {"x": detector.predict(clean), "x_aug": detector.predict(augmented)}
    for pred in predictions["x"]:
        keep = pred["scores"] >= args.pseudo_score
        truth.append({"boxes": pred["boxes"][keep].numpy(), "labels": pred["labels"][keep].numpy(),
                      "difficult": np.zeros(int(keep.sum()), bool)})
    weights = bootstrap_weights(len(pairs), args.resamples, seed=0)
    num_classes = detector.num_classes

    # 1. the detector's score on its pseudo boxes, x and x_aug
    per_image = {name: [score_on_boxes(pr, t) for pr, t in zip(preds, truth)] for name, preds in predictions.items()}
    counts = np.array([len(s) for s in per_image["x"]], dtype=np.float64)
    sums = {name: np.array([s.sum() for s in values]) for name, values in per_image.items()}
    mean = {name: float(v.sum() / counts.sum()) for name, v in sums.items()}
    resampled = {name: (weights @ v) / np.maximum(weights @ counts, 1) for name, v in sums.items()}
    result = {"photos": ids, "detector": args.detector, "pseudo_boxes": int(counts.sum()),
              "pseudo_score": args.pseudo_score,
              "linf_levels": [int(((a - c) * 255).round().abs().max()) for a, c in zip(augmented, clean)],
              "mean_score_on_pseudo_boxes": {
                  "x": mean["x"], "x_aug": mean["x_aug"],
                  "x_aug - x": interval_dict(resampled["x_aug"] - resampled["x"], mean["x_aug"] - mean["x"])}}

    # 2. JPEG of x and of x_aug against the clean pseudo ground truth
    result["jpeg"] = []
    for quality in [int(q) for q in args.jpeg.split(",")]:
        row = {"quality": quality}
        maps = {}
        for name, images in (("x", clean), ("x_aug", augmented)):
            decoded, sizes = zip(*(jpeg(img, quality) for img in images))
            preds = [{k: v.numpy() for k, v in pr.items()} for pr in detector.predict(list(decoded))]
            records = image_matches(truth, preds, num_classes, coco=False, image_ids=ids)
            maps[name] = (map_from_matches(records, "voc07"), map_from_matches(records, "voc07", weights))
            pixels = sum(img.shape[1] * img.shape[2] for img in images)
            row[f"bpp {name}"] = 8 * sum(sizes) / pixels
            row[f"map {name}"] = float(maps[name][0])
        row["map x_aug - x"] = interval_dict(maps["x_aug"][1] - maps["x"][1], maps["x_aug"][0] - maps["x"][0])
        result["jpeg"].append(row)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stage_one.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "stage_one.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    def ci(d: dict, scale: float = 1.0, fmt: str = "+.3f") -> str:
        bold = d["low"] > 0 or d["high"] < 0
        text = f"{d['estimate'] * scale:{fmt}} [{d['low'] * scale:{fmt}}, {d['high'] * scale:{fmt}}]"
        return f"**{text}**" if bold else text

    s = result["mean_score_on_pseudo_boxes"]
    lines = [f"{result['detector']} on {len(result['photos'])} photos, {result['pseudo_boxes']} pseudo ground-truth "
             f"boxes (score >= {result['pseudo_score']} on the clean photo); largest change "
             f"{max(result['linf_levels'])} levels.", "",
             "| | x | x_aug | x_aug - x [95% CI] |", "|---|---:|---:|---:|",
             f"| mean score on the pseudo boxes | {s['x']:.3f} | {s['x_aug']:.3f} | {ci(s['x_aug - x'])} |", "",
             "| JPEG quality | bpp x | bpp x_aug | mAP@0.5 x | mAP@0.5 x_aug | x_aug - x (points) [95% CI] |",
             "|---:|---:|---:|---:|---:|---:|"]
    for row in result["jpeg"]:
        lines.append(f"| {row['quality']} | {row['bpp x']:.3f} | {row['bpp x_aug']:.3f} | {100 * row['map x']:.1f} | "
                     f"{100 * row['map x_aug']:.1f} | {ci(row['map x_aug - x'], 100, '+.1f')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
