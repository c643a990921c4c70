"""The table of benchmarks/maa_ablation.sh, from what its rows left in its output folder.

    python benchmarks/ablation_table.py runs/maa_ablation > runs/maa_ablation/ablation.md

Reads ``OUT/rows.txt`` (one ``name|setting|stage-one flags|beta|seed`` line per row run),
``OUT/transfer/<setting>.json`` (benchmarks/meta_transfer.py),
``OUT/tables/bd_map-voc07.csv`` (Evaluation/make_tables.py with ``--anchor control``) and
``OUT/share/<row>_q<Q>.json`` (benchmarks/delta_share.py). Cells are a difference and its
95% paired bootstrap interval; a row without a number has none yet.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from icm.cli import HelpFormatter
from icm.io import read_json

PROTOCOL = "map-voc07"
BD_MEASURES = (  # (result key, column title, scale to the shown unit, which BD)
    (f"{PROTOCOL}:seen-mean", "seen BD-mAP (points)", 100.0, "bd_quality"),
    (f"{PROTOCOL}:unseen-mean", "unseen BD-mAP (points)", 100.0, "bd_quality"),
    (f"{PROTOCOL}:unseen-mean", "unseen BD-rate (%)", 1.0, "bd_rate_percent"),
    ("psnr-rgb", "BD-PSNR (dB)", 1.0, "bd_quality"),
)
TRANSFER_MEASURES = (  # (group, difference, column title)
    ("seen mean", "maa-clean", "seen: maa - clean"),
    ("unseen mean", "maa-clean", "unseen: maa - clean"),
    ("unseen mean", "maa-random", "unseen: maa - random"),
    ("unseen mean", "maa-smooth", "unseen: maa - smooth"),
)


def read_rows(out: Path) -> list[dict]:
    """The rows run so far, in the order they were first run."""
    path = out / "rows.txt"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, setting, flags, beta, seed = line.split("|")
        rows.append({"name": name, "setting": setting, "flags": flags or "(defaults)", "beta": beta, "seed": seed})
    return rows


def read_bd(out: Path) -> dict[tuple[str, str], dict]:
    """(codec, measure) -> the BD CSV row of make_tables (values as floats, None when empty)."""
    path = out / "tables" / f"bd_{PROTOCOL}.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {(r["codec"], r["measure"]): r for r in csv.DictReader(f)}


def _float(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def bd_cell(row: dict | None, which: str, scale: float) -> str:
    """``+1.23 [-0.40, +2.87]``, starred where the interval excludes 0; empty without a value."""
    if row is None:
        return ""
    estimate, low, high = (_float(row.get(f"{which}{s}")) for s in ("", "_low", "_high"))
    if estimate is None:
        return "n/a"
    text = f"{scale * estimate:+.2f}"
    if low is not None and high is not None:
        text += f" [{scale * low:+.2f}, {scale * high:+.2f}]"
        if row.get(f"{which}_excludes_0") == "yes":
            text = f"**{text}**"
    return text


def share_cell(out: Path, name: str) -> str:
    """``q2 0.007, q5 0.011``: the row's share of delta learned at each quality (empty: none)."""
    parts = []
    for path in sorted((out / "share").glob(f"{name}_q*.json")):
        quality = path.stem.rsplit("_q", 1)[1]
        parts.append(f"q{quality} {read_json(path)['share_mean']:.3f}")
    return ", ".join(parts)


def transfer_cell(result: dict | None, group: str, difference: str) -> str:
    d = (result or {}).get("detectors", {}).get(group, {}).get(difference)
    if not d:
        return ""
    text = f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
    return f"**{text}**" if d["low"] > 0 or d["high"] < 0 else text


def ablation_table(out: Path) -> str:
    """The Markdown table: one line per row, transfer (clean images) then decoded images."""
    rows, bd = read_rows(out), read_bd(out)
    header = (["row", "stage one", "beta", "seed", "mean \\|delta\\|"] + [t for _, _, t in TRANSFER_MEASURES]
              + [t for _, t, _, _ in BD_MEASURES] + ["share of delta learned"])
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|" + "---:|" * (len(header) - 4)]
    for row in rows:
        transfer_path = out / "transfer" / f"{row['setting']}.json"
        transfer = read_json(transfer_path) if transfer_path.is_file() and row["beta"] not in ("0", "0.0") else None
        delta = f"{transfer['mean_abs_delta_levels']['maa']:.2f}" if transfer else ""
        cells = [row["name"], row["flags"], row["beta"], row["seed"], delta]
        cells += [transfer_cell(transfer, g, d) for g, d, _ in TRANSFER_MEASURES]
        if row["name"] == "control":
            cells += ["(reference)"] * len(BD_MEASURES)
        else:
            cells += [bd_cell(bd.get((row["name"], key)), which, scale) for key, _, scale, which in BD_MEASURES]
        cells.append(share_cell(out, row["name"]))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "Transfer: benchmarks/meta_transfer.py on clean toy val images, VOC07 mAP@0.5 in points, 95% paired "
        "bootstrap intervals over images; random = same-size random signs, smooth = same-size smooth field. "
        "Decoded images: BD against the beta = 0 control (the row `control`) with the same images and "
        f"qualities, {PROTOCOL} group means, pchip, 95% paired bootstrap intervals over images (make_tables). "
        "Bold: the interval excludes 0. The rows control_seed1 and defaults_seed1 (another stage-two seed) are "
        "the noise floor of a fine-tune; BD-rate is n/a where a curve is not monotonic in rate. Share of delta "
        "learned: per quality, the projection of (row's decode - control's decode) on the perturbation, over "
        "the perturbation's energy, mean over the stage-two training images (1: all of it reproduced).",
    ]
    return "\n".join(lines + notes) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="ablation_table.py", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("out", type=Path, help="benchmarks/maa_ablation.sh's output folder (its ABL_OUT)")
    text = ablation_table(p.parse_args(argv).out)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
