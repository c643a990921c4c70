"""One picture of what MAA-ICM does: for a few stage-one images, a row of

    original | augmented (stage one) | perturbation (amplified) | anchor-decoded | MAA-decoded

with each detector's boxes drawn in its own colour (the seen ones and, say, one unseen).
The decoded panels come from real bitstreams of the *original* image, as at test time, and
are titled with their bpp and PSNR.

    python Evaluation/visualize.py --config configs/toy.yaml \\
        --augmented_data runs/demo/augmented_data \\
        --anchor assets/toy/codec_q2.pth.tar --maa runs/demo/codecs/maa_q2/last.pth.tar \\
        --out runs/demo/visual.png
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from icm.cli import (
    detector_weights,
    exit_on_user_error,
    key_value,
    positive_int,
    positive_number,
    probability,
    resolve_device,
)
from icm.config import parse_args_with_config
from icm.io import atomic_path, read_image_tensor
from icm.manifest import linf_8bit, read_manifest_pairs

PANELS = ("original", "augmented", "perturbation", "anchor-decoded", "MAA-decoded")
# Panels whose pixels a detector looks at (the perturbation panel shows no boxes).
DETECTED_PANELS = ("original", "augmented", "anchor-decoded", "MAA-decoded")
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


@dataclass
class Row:
    """The panels of one image: [3, H, W] images in [0, 1], their titles, and per detected
    panel each detector's predictions above the score threshold."""

    id: str
    images: dict[str, torch.Tensor]
    titles: dict[str, str]
    boxes: dict[str, dict[str, dict[str, torch.Tensor]]]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="visualize.py",
        description="Render original | augmented | perturbation | anchor-decoded | MAA-decoded, with "
        "detector boxes, for a few stage-one images into one PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file of defaults (section visualize); flags win")
    p.add_argument("--augmented_data", required=True,
                   help="a stage-one output folder (manifest.jsonl: originals and augmented images)")
    p.add_argument("--anchor", required=True, help="codec checkpoint of the anchor (not fine-tuned)")
    p.add_argument("--maa", required=True, help="codec checkpoint fine-tuned by stage two (beta > 0)")
    p.add_argument("--backbone", default=None,
                   help="architecture of checkpoints that do not record one, e.g. bmshj2018-hyperprior")
    p.add_argument("--detectors", nargs="+", default=[],
                   help="detector names whose boxes are drawn (e.g. the seen ones and one unseen); required")
    p.add_argument("--weights", type=key_value, action="append", default=[], metavar="NAME=PATH",
                   help="local weights of a detector (repeatable); others use their default weights")
    p.add_argument("--num_images", type=positive_int, default=4, help="rows: the first N images of the manifest")
    p.add_argument("--ids", nargs="*", default=None, help="draw these image ids instead of the first N")
    p.add_argument("--amplify", type=positive_number, default=10.0,
                   help="the perturbation panel shows 0.5 + amplify * (augmented - original)")
    p.add_argument("--score_threshold", type=probability, default=0.5, help="boxes below this score are not drawn")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", default="visual.png", help="the PNG to write")
    p.add_argument("--dpi", type=positive_int, default=110, help="resolution of the PNG")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parse_args_with_config(build_parser(), argv, "visualize")
    if not args.detectors:
        raise ValueError("--detectors: name at least one detector (or give them in the config's visualize: section)")
    return args


def select_pairs(augmented_data: str | Path, num_images: int, ids: list[str] | None):
    """The stage-one pairs to draw: those of ``ids`` (in that order) or the first ``num_images``."""

    pairs = read_manifest_pairs(augmented_data)
    if not pairs:
        raise ValueError(f"{augmented_data}: the manifest lists no image pairs whose files exist")
    if not ids:
        return pairs[:num_images]
    by_id = {p.id: p for p in pairs}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise ValueError(f"{augmented_data}: no image {unknown[0]!r} in its manifest")
    return [by_id[i] for i in ids]


def amplified_perturbation(augmented: torch.Tensor, original: torch.Tensor, amplify: float) -> torch.Tensor:
    """``0.5 + amplify * (augmented - original)`` clipped to [0, 1]: mid-grey where nothing changed."""
    return (0.5 + amplify * (augmented - original)).clamp(0, 1)


def code_and_decode(codec, image: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Real bitstream round trip of ``image`` [3, H, W]: (decoded image rounded to 8 bits, as
    Evaluation/evaluate.py measures and detects on it, bpp, PSNR in dB)."""
    from icm.codec import bits_per_pixel
    from icm.evaluation.metrics import psnr, to_8bit

    payload, num_bytes = codec.encode(image[None])
    decoded = to_8bit(codec.decode(payload)[0]).cpu() / 255.0
    return decoded, bits_per_pixel(num_bytes, *image.shape[-2:]), psnr(image[None], decoded[None])


def build_rows(pairs, anchor, maa, detectors: dict, score_threshold: float, amplify: float) -> list[Row]:
    """Decode each original with both codecs and run every detector on every detected panel."""
    rows = []
    for pair in pairs:
        original = read_image_tensor(pair.original)
        augmented = read_image_tensor(pair.augmented)
        if augmented.shape != original.shape:
            raise ValueError(f"{pair.augmented}: size {tuple(augmented.shape[1:])} differs from its "
                             f"original {pair.original} ({tuple(original.shape[1:])})")
        anchor_decoded, anchor_bpp, anchor_psnr = code_and_decode(anchor, original)
        maa_decoded, maa_bpp, maa_psnr = code_and_decode(maa, original)
        linf = int(linf_8bit(augmented[None], original[None])[0])
        images = {
            "original": original,
            "augmented": augmented,
            "perturbation": amplified_perturbation(augmented, original, amplify),
            "anchor-decoded": anchor_decoded,
            "MAA-decoded": maa_decoded,
        }
        titles = {
            "original": pair.id,
            "augmented": f"augmented (L-inf {linf}/255)",
            "perturbation": f"perturbation x{amplify:g}",
            "anchor-decoded": f"anchor {anchor_bpp:.3f} bpp, {anchor_psnr:.2f} dB",
            "MAA-decoded": f"MAA {maa_bpp:.3f} bpp, {maa_psnr:.2f} dB",
        }
        boxes: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        for panel in DETECTED_PANELS:
            boxes[panel] = {}
            for name, detector in detectors.items():
                pred = detector.predict([images[panel].to(detector.device)])[0]
                keep = pred["scores"] >= score_threshold
                boxes[panel][name] = {k: v[keep].cpu() for k, v in pred.items()}
        rows.append(Row(pair.id, images, titles, boxes))
    return rows


def render(rows: list[Row], class_names: dict[str, list[str]], out: str | Path, dpi: int = 110) -> Path:
    """Draw ``rows`` (one per image, one column per panel) with a legend of detector colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    names = list(class_names)
    colour = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(names)}
    fig, axes = plt.subplots(len(rows), len(PANELS), figsize=(2.9 * len(PANELS), 2.9 * len(rows) + 0.5),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, panel in enumerate(PANELS):
            ax = axes[r][c]
            ax.imshow(row.images[panel].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(row.titles[panel], fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            for name, pred in row.boxes.get(panel, {}).items():
                for (x1, y1, x2, y2), label, score in zip(pred["boxes"].tolist(), pred["labels"].tolist(),
                                                          pred["scores"].tolist()):
                    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, ec=colour[name]))
                    ax.text(x1, y1, f"{class_names[name][label]} {score:.2f}", fontsize=5, color="white",
                            va="bottom", bbox={"facecolor": colour[name], "alpha": 0.7, "pad": 0.5, "lw": 0})
    fig.legend(handles=[Patch(facecolor="none", edgecolor=colour[n], label=n) for n in names],
               loc="upper center", ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from icm.detectors import build_detector_set
    from icm.evaluation.image_codecs import learned_from_checkpoint

    device = resolve_device(args.device)
    pairs = select_pairs(args.augmented_data, args.num_images, args.ids)
    anchor = learned_from_checkpoint(args.anchor, "anchor", device=device, backbone=args.backbone)
    maa = learned_from_checkpoint(args.maa, "maa", device=device, backbone=args.backbone)
    weights = detector_weights(args.weights)
    detectors = build_detector_set(args.detectors, weights, device=str(device))
    rows = build_rows(pairs, anchor, maa, detectors, args.score_threshold, args.amplify)
    path = render(rows, {name: d.classes for name, d in detectors.items()}, args.out, args.dpi)
    print(f"wrote {path} ({len(rows)} images, detectors {', '.join(detectors)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
