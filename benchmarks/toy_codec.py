"""Is the toy codec fit to test the method? The toy world's codec targets and the anchor's
convergence, measured with the project's own CLIs on the toy val split.

    python benchmarks/toy_codec.py                         # all 300 val images, every quality
    python benchmarks/toy_codec.py --limit 100 --control_qualities 1,3,5,6   # as the README ran it
    python benchmarks/toy_codec.py --limit 100 --control_steps 0   # the curves only
    python benchmarks/toy_codec.py --report_only           # the report from the results on disk

Steps (each resumes: evaluate.py skips finished points, a finished training is kept):

1. ``Evaluation/evaluate.py`` on ``--split``: ``none`` (clean), Pillow JPEG and WebP, and the
   shipped toy codec (``anchor``: ``assets/toy/codec_q<Q>.pth.tar`` for ``--qualities``),
   real bitstreams, every detector of ``configs/toy.yaml``.
2. The convergence check: ``Compression/train_compression.py`` with ``--beta 0`` (stage two's
   control, the same settings as configs/toy.yaml: lr 1e-4, batch 16) for another
   ``--control_steps`` steps from each anchor checkpoint, on the toy train images; the result
   (``control<steps>``) is evaluated like the anchor.
3. The report (``OUT/report.md``, ``OUT/report.json``), each target with pass/fail:

   - ``psnr span``: the anchor's highest minus lowest PSNR, at least ``SPAN_DB`` dB;
   - ``top quality``: every detector keeps at least ``TOP_KEEP`` of its clean VOC07 mAP@0.5;
   - ``lowest quality``: the mean mAP@0.5 over all detectors keeps at least ``LOW_KEEP``;
   - ``vs WebP``: between ``WEBP_RANGE`` bpp, the anchor's PSNR minus WebP's (both
     interpolated linearly in log-bpp, on a grid of 31 rates) is never below 0;
   - ``converged``: the control's BD-PSNR against the anchor is within ``CONVERGED_DB`` dB and
     its BD-rate on the mean mAP@0.5 within ``CONVERGED_RATE`` %, each with the 95% interval
     of the paired bootstrap over images (``Evaluation/make_tables.py``).

   The rate-PSNR table of every codec (JPEG, WebP included) and each detector's mAP are
   printed with it.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from icm.cli import HelpFormatter, exit_on_user_error, limit, non_negative_int, positive_int
from icm.config import REPO_ROOT, TOY_CONFIG
from icm.data import link_split_images
from icm.evaluation.make_tables import (
    GROUP_SUFFIX,
    Curve,
    bd_table,
    bootstrap_curves,
    load_curves,
)
from icm.io import atomic_write_json, atomic_write_text, read_jsonl

SPAN_DB = 5.0
TOP_KEEP = 0.60
LOW_KEEP = 0.25
WEBP_RANGE = (0.3, 0.6)
CONVERGED_DB = 0.2
CONVERGED_RATE = 3.0
PROTOCOL = "map-voc07"  # VOC07 11-point mAP@0.5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy_codec.py", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/toy_codec", help="results folder")
    p.add_argument("--qualities", default="1,2,3,4,5,6", help="toy codec qualities, comma-separated")
    p.add_argument("--assets", default="assets/toy", help="folder of codec_q<Q>.pth.tar")
    p.add_argument("--split", default="val", help="toy split evaluated")
    p.add_argument("--limit", type=limit, default=None, help="first N images of the split (None: all)")
    p.add_argument("--control_steps", type=non_negative_int, default=500,
                   help="steps of beta=0 fine-tuning from each anchor checkpoint (0: skip the check)")
    p.add_argument("--control_qualities", default=None,
                   help="qualities of the convergence check, comma-separated (None: --qualities; the BD is "
                   "taken over the part of the curves both cover)")
    p.add_argument("--jobs", type=positive_int, default=2, help="control trainings at the same time (1 thread each)")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000, help="bootstrap resamples of the intervals")
    p.add_argument("--report_only", action="store_true", help="only the report, from the results in --out")
    return p


# ----------------------------------------------------------------------------- running


def run(cmd: list[str], log_path: Path | None = None, threads: int | None = None) -> subprocess.Popen:
    """Start ``cmd`` in the repository root (output to ``log_path``, or the terminal)."""
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if log_path is None:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env)
    with open(log_path, "a", encoding="utf-8") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_all(processes: list[tuple[str, subprocess.Popen]]) -> None:
    failed = [name for name, p in processes if p.wait() != 0]
    if failed:
        raise RuntimeError(f"failed: {', '.join(failed)} (see their logs)")


def evaluate(args: argparse.Namespace, codecs: list[str]) -> None:
    cmd = [sys.executable, "Evaluation/evaluate.py", "--config", str(TOY_CONFIG), "--dataset", "toy",
           "--split", args.split, "--codecs", *codecs, "--out", str(Path(args.out) / "eval")]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    wait_all([("evaluate.py", run(cmd))])


def control_runs(args: argparse.Namespace, qualities: list[int]) -> list[Path]:
    """Fine-tune each anchor checkpoint ``--control_steps`` more steps with beta = 0; the
    checkpoints, in quality order."""
    out = Path(args.out).resolve()
    images = link_split_images("toy", "train", out / "train_images")
    pending, checkpoints = [], []
    for q in qualities:
        save_dir = out / f"control{args.control_steps}" / f"q{q}"
        checkpoints.append(save_dir / "last.pth.tar")
        log = save_dir / "log.jsonl"
        if log.is_file() and any(r.get("split") == "final" for r in read_jsonl(log)):
            continue
        # A resume takes the run's settings from its checkpoint (the config's would clash).
        start = (["--resume", str(save_dir / "last.pth.tar")] if (save_dir / "last.pth.tar").is_file() else
                 ["--config", str(TOY_CONFIG), "--checkpoint", str(Path(args.assets) / f"codec_q{q}.pth.tar"),
                  "--quality", str(q), "--beta", "0"])
        pending.append((f"control q{q}", save_dir, [
            sys.executable, "Compression/train_compression.py", "--dataset", str(images), *start, "--num_workers", "0",
            "--epochs", "100000", "--max_steps", str(args.control_steps), "--save_dir", str(save_dir),
            "--no_tensorboard"]))
    while pending:
        batch, pending = pending[: args.jobs], pending[args.jobs :]
        started = []
        for name, save_dir, cmd in batch:
            save_dir.mkdir(parents=True, exist_ok=True)
            print(f"training {name}: {args.control_steps} steps of beta=0 fine-tuning (log {save_dir / 'train.log'})",
                  flush=True)
            started.append((name, run(cmd, save_dir / "train.log", threads=1)))
        wait_all(started)
    return checkpoints


# ----------------------------------------------------------------------------- report


def log_interp(rates: list[float], values: list[float], grid: np.ndarray) -> np.ndarray:
    """``values`` at ``grid`` (bpp), linear in log-bpp between the points (sorted by rate)."""
    order = np.argsort(rates)
    return np.interp(np.log(grid), np.log(np.asarray(rates)[order]), np.asarray(values)[order])


def psnr_margin(anchor: Curve, other: Curve, low: float, high: float, points: int = 31) -> dict:
    """Anchor PSNR minus ``other``'s on a log grid over the part of [low, high] bpp both cover."""
    lo = max(low, min(anchor.results["bpp"]), min(other.results["bpp"]))
    hi = min(high, max(anchor.results["bpp"]), max(other.results["bpp"]))
    if lo >= hi:
        return {"covered": None, "min_margin_db": None, "mean_margin_db": None}
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), points))
    margin = (log_interp(anchor.results["bpp"], anchor.results["psnr-rgb"], grid)
              - log_interp(other.results["bpp"], other.results["psnr-rgb"], grid))
    return {"covered": [round(lo, 4), round(hi, 4)], "min_margin_db": float(margin.min()),
            "mean_margin_db": float(margin.mean()), "at_bpp": float(grid[int(margin.argmin())])}


def span_on_common_rates(anchor: Curve, other: Curve) -> dict:
    """PSNR gained from the lowest to the highest bpp both curves cover, by each (log-bpp
    interpolation): how steep the anchor's curve is next to ``other``'s on the same rates."""
    lo = max(min(anchor.results["bpp"]), min(other.results["bpp"]))
    hi = min(max(anchor.results["bpp"]), max(other.results["bpp"]))
    if lo >= hi:
        return {"covered": None, "anchor_db": None, "other_db": None}
    ends = np.array([lo, hi])
    gain = {name: float(np.diff(log_interp(c.results["bpp"], c.results["psnr-rgb"], ends))[0])
            for name, c in (("anchor_db", anchor), ("other_db", other))}
    return {"covered": [round(lo, 4), round(hi, 4)], **gain}


def codec_targets(curves: dict[str, Curve], control: str | None, resamples: int = 1000) -> dict:
    """Every target of the toy codec (see the module docstring) from the loaded curves:
    ``anchor``, ``none``, ``webp`` (``jpeg`` optional) and the convergence control."""
    anchor, clean, webp = curves["anchor"], curves["none"], curves["webp"]
    psnrs = anchor.results["psnr-rgb"]
    report: dict = {"psnr_span": {"value_db": max(psnrs) - min(psnrs), "target_db": SPAN_DB}}
    report["psnr_span"]["pass"] = report["psnr_span"]["value_db"] >= SPAN_DB
    report["psnr_span"]["same_bpp"] = span_on_common_rates(anchor, webp)
    detectors = anchor.detectors(PROTOCOL)
    if detectors:
        top, low = int(np.argmax(anchor.results["bpp"])), int(np.argmin(anchor.results["bpp"]))
        keep = {d: anchor.results[f"{PROTOCOL}:{d}"][top] / clean.results[f"{PROTOCOL}:{d}"][0] for d in detectors}
        report["top_quality"] = {"quality": anchor.qualities[top], "kept": keep, "target": TOP_KEEP,
                                 "pass": min(keep.values()) >= TOP_KEEP}
        key = f"{PROTOCOL}:all{GROUP_SUFFIX}"
        kept = anchor.results[key][low] / clean.results[key][0]
        report["lowest_quality"] = {"quality": anchor.qualities[low], "kept_mean": kept, "target": LOW_KEEP,
                                    "pass": kept >= LOW_KEEP}
    report["vs_webp"] = {"range_bpp": list(WEBP_RANGE), **psnr_margin(anchor, webp, *WEBP_RANGE)}
    full = report["vs_webp"]["covered"] == [WEBP_RANGE[0], WEBP_RANGE[1]]
    report["vs_webp"]["pass"] = bool(full and report["vs_webp"]["min_margin_db"] >= 0)
    if "jpeg" in curves:
        report["vs_jpeg"] = {"range_bpp": list(WEBP_RANGE), **psnr_margin(anchor, curves["jpeg"], *WEBP_RANGE)}
    if control is not None and control in curves:
        report["converged"] = convergence(anchor, curves[control], resamples)
    return report


def convergence(anchor: Curve, control: Curve, resamples: int) -> dict:
    """BD-PSNR and BD-rate on every mAP key of ``control`` against ``anchor``, with intervals."""
    boot = bootstrap_curves([anchor, control], anchor, resamples, seed=0) if resamples else None
    table = bd_table([anchor, control], anchor, PROTOCOL, "pchip", boot)
    rows = {}
    for row in table.csv_rows:
        rate, rate_low, rate_high, _, _, quality, q_low, q_high = row[2:10]
        rows[row[1]] = {"bd_rate_percent": [rate, rate_low, rate_high], "bd_quality": [quality, q_low, q_high]}
    psnr = rows["psnr-rgb"]["bd_quality"][0]
    rate = rows[f"{PROTOCOL}:all{GROUP_SUFFIX}"]["bd_rate_percent"][0]
    return {"control": control.name, "bd": rows, "target_db": CONVERGED_DB, "target_rate_percent": CONVERGED_RATE,
            "pass": bool(abs(psnr) < CONVERGED_DB and abs(rate) < CONVERGED_RATE)}


def _num(value, fmt: str = ".2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _ci(triple: list, fmt: str = ".2f") -> str:
    est, low, high = triple
    return f"{_num(est, fmt)} [{_num(low, fmt)}, {_num(high, fmt)}]" if low is not None else _num(est, fmt)


def format_report(curves: dict[str, Curve], report: dict) -> str:
    yes = {True: "pass", False: "FAIL"}
    lines = ["# Toy codec targets", "", "| codec | quality | bpp | PSNR (dB) | mean mAP@0.5 (%) |", "|---|---|---|---|---|"]
    key = f"{PROTOCOL}:all{GROUP_SUFFIX}"
    for name, curve in curves.items():
        for i, q in enumerate(curve.qualities):
            m = curve.results.get(key, [None] * (i + 1))[i]
            lines.append(f"| {name} | {q if q is not None else ''} | {curve.results['bpp'][i]:.4f} | "
                         f"{_num(curve.results['psnr-rgb'][i])} | {_num(None if m is None else 100 * m)} |")
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    s = report["psnr_span"]
    same = s.get("same_bpp") or {}
    beside = (f" (over {same['covered'][0]}-{same['covered'][1]} bpp, where WebP runs too: this codec "
              f"{same['anchor_db']:.2f} dB, WebP {same['other_db']:.2f} dB)" if same.get("covered") else "")
    lines.append(f"| PSNR span >= {SPAN_DB:g} dB | {s['value_db']:.2f} dB{beside} | {yes[s['pass']]} |")
    if "top_quality" in report:
        t = report["top_quality"]
        kept = ", ".join(f"{d} {100 * v:.0f}%" for d, v in t["kept"].items())
        lines.append(f"| top quality (q{t['quality']}) keeps >= {TOP_KEEP:.0%} of clean mAP@0.5, each | {kept} | "
                     f"{yes[t['pass']]} |")
        t = report["lowest_quality"]
        lines.append(f"| lowest quality (q{t['quality']}) mean keeps >= {LOW_KEEP:.0%} | {100 * t['kept_mean']:.0f}% | "
                     f"{yes[t['pass']]} |")
    for other in ("webp", "jpeg"):
        w = report.get(f"vs_{other}")
        if w is None:
            continue
        result = yes[w["pass"]] if "pass" in w else "(reported)"
        lines.append(f"| PSNR >= {other.upper()} over {WEBP_RANGE[0]}-{WEBP_RANGE[1]} bpp (covered: {w['covered']}) | "
                     f"min {_num(w['min_margin_db'])} dB, mean {_num(w['mean_margin_db'])} dB | {result} |")
    if "converged" in report:
        c = report["converged"]
        psnr, rate = c["bd"]["psnr-rgb"]["bd_quality"], c["bd"][key]["bd_rate_percent"]
        lines.append(f"| {c['control']} vs anchor: BD-PSNR within {CONVERGED_DB} dB, mean-mAP BD-rate within "
                     f"{CONVERGED_RATE:g}% | BD-PSNR {_ci(psnr, '.3f')} dB, BD-rate {_ci(rate)}% | {yes[c['pass']]} |")
        for k, v in c["bd"].items():
            if k.startswith(PROTOCOL):
                lines.append(f"| ({k.split(':', 1)[1]}) | BD-rate {_ci(v['bd_rate_percent'])}%, "
                             f"BD-mAP {_ci([None if x is None else 100 * x for x in v['bd_quality']])} points | |")
    return "\n".join(lines) + "\n"


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    qualities = sorted(int(q) for q in args.qualities.split(","))
    out = Path(args.out)
    anchor = [str(Path(args.assets) / f"codec_q{q}.pth.tar") for q in qualities]
    for path in anchor:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such codec (build it with scripts/build_toy_assets.py --only codec)")
    control = f"control{args.control_steps}" if args.control_steps > 0 else None
    if not args.report_only:
        evaluate(args, ["none", "jpeg", "webp", "anchor=" + ",".join(anchor)])
        if control:
            control_qualities = sorted(int(q) for q in (args.control_qualities or args.qualities).split(","))
            checkpoints = control_runs(args, control_qualities)
            evaluate(args, [f"{control}=" + ",".join(map(str, checkpoints))])
    names = ["none", "jpeg", "webp", "anchor"] + ([control] if control else [])
    paths = [out / "eval" / f"{n}.json" for n in names if (out / "eval" / f"{n}.json").is_file()]
    curves = {c.name: c for c in load_curves(paths)}
    for needed in ("none", "webp", "anchor"):
        if needed not in curves:
            raise FileNotFoundError(f"{out / 'eval' / (needed + '.json')}: missing; run without --report_only")
    report = codec_targets(curves, control, args.bootstrap)
    text = format_report(curves, report)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", text)
    print(text)
    return report


if __name__ == "__main__":
    main()
