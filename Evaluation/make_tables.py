"""Tables and plots from evaluation results: Markdown, CSV and LaTeX tables per detection
protocol (each detector, the seen and unseen group means, the mean over all), BD-rate and
BD-quality against an anchor codec, and rate-accuracy / rate-PSNR plots.

    python Evaluation/make_tables.py results/*.json --anchor bmshj2018-hyperprior-mse --out results/tables
    cd Evaluation && python make_tables.py ../results/*.json --img_dir ../img

Inputs: the JSON files of ``Evaluation/evaluate.py`` (curve files ``OUT/<codec>.json`` or
point files ``OUT/points/*.json``; points of one codec are merged by quality) or any
CompressAI result file with ``name`` and ``results.bpp``. The anchor defaults to the zoo
codec among the inputs (else a codec whose name says base/pretrained/anchor, else the
first learned codec, else the first file).

Outputs in ``--out``: ``results_<protocol>.{md,csv,tex}`` (one row per codec and quality),
``bd_<protocol>.{md,csv,tex}`` (one row per codec: BD-rate in % of bpp against PSNR and
against each mAP, BD-PSNR in dB and BD-mAP in mAP points, ``bjontegaard`` package with the
interpolation named in the table), ``tables.md`` (all Markdown tables); plots in
``--img_dir``: ``rate_psnr.png`` and ``rate_<protocol>.png`` (one panel per detector and
group mean) for ``--plot_protocols``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from Evaluation.bd_rate import DEFAULT_METHOD, METHODS, bd_quality, bd_rate  # noqa: E402
from icm.cli import exit_on_user_error  # noqa: E402
from icm.config import parse_args_with_config  # noqa: E402
from icm.io import atomic_path, atomic_write_text, read_json  # noqa: E402

# Detection metric prefixes in the order tables show them.
PROTOCOLS = ("map-voc07", "map-voc12", "map-coco", "ap50-coco", "ap75-coco", "mask-map-coco")
PROTOCOL_TITLES = {
    "map-voc07": "VOC07 11-point mAP@0.5",
    "map-voc12": "VOC12 all-point mAP@0.5",
    "map-coco": "COCO AP@[.5:.95]",
    "ap50-coco": "COCO AP50",
    "ap75-coco": "COCO AP75",
    "mask-map-coco": "COCO mask AP@[.5:.95]",
}
GROUP_SUFFIX = "-mean"
PLOT_PROTOCOLS = ("map-voc07", "map-coco")


@dataclass
class Curve:
    """One codec's points: ``results[metric][i]`` belongs to ``qualities[i]``."""

    name: str
    kind: str
    qualities: list
    results: dict[str, list]
    groups: dict[str, list[str]] = field(default_factory=dict)

    def detectors(self, protocol: str) -> list[str]:
        """Individual detectors measured with ``protocol`` (group means excluded)."""
        prefix = protocol + ":"
        return [k[len(prefix):] for k in self.results
                if k.startswith(prefix) and not k.endswith(GROUP_SUFFIX)]


def load_curves(paths: list[str | Path]) -> list[Curve]:
    """Read result files; points of the same codec name merge (a later file's point at the
    same quality wins). Curves come back in the order their names first appear."""
    points: dict[str, dict] = {}
    for path in paths:
        data = read_json(path)
        if not isinstance(data, dict) or "bpp" not in data.get("results", {}):
            raise ValueError(f"{path}: not a result file (no results.bpp)")
        name = str(data.get("name") or Path(path).stem)
        results = data["results"]
        n = len(results["bpp"])
        qualities = data.get("qualities") or [None] * n
        entry = points.setdefault(name, {"kind": data.get("codec", {}).get("kind", ""), "points": {},
                                         "groups": data.get("detector_groups", {})})
        for i in range(n):
            key = qualities[i] if qualities[i] is not None else f"#{len(entry['points'])}"
            entry["points"][key] = {m: (v[i] if isinstance(v, list) and i < len(v) else None)
                                    for m, v in results.items()}
    curves = []
    for name, entry in points.items():
        items = sorted(entry["points"].items(), key=lambda kv: (kv[1].get("bpp") or 0.0))
        metrics: list[str] = []
        for _, p in items:
            metrics.extend(m for m in p if m not in metrics)
        curves.append(Curve(
            name=name, kind=entry["kind"],
            qualities=[q if not str(q).startswith("#") else None for q, _ in items],
            results={m: [p.get(m) for _, p in items] for m in metrics},
            groups=entry["groups"],
        ))
    return curves


def default_anchor(curves: list[Curve]) -> str:
    """The zoo codec, else a base/pretrained/anchor-named codec, else the first checkpoint
    codec, else the first compressed codec."""
    for test in (
        lambda c: c.kind == "zoo",
        lambda c: any(w in c.name.lower() for w in ("base", "pretrained", "anchor")),
        lambda c: c.kind == "checkpoint",
        lambda c: c.name != "none",
    ):
        for c in curves:
            if test(c):
                return c.name
    return curves[0].name


def protocols_present(curves: list[Curve]) -> list[str]:
    found = {k.split(":", 1)[0] for c in curves for k in c.results if ":" in k}
    return [p for p in PROTOCOLS if p in found]


def columns_for(curves: list[Curve], protocol: str) -> list[tuple[str, str]]:
    """(result key, column title) of one protocol: each detector, then the group means."""
    detectors: list[str] = []
    for c in curves:
        detectors.extend(d for d in c.detectors(protocol) if d not in detectors)
    groups: list[str] = []
    for c in curves:
        groups.extend(g for g, members in c.groups.items() if members and g not in groups)
    cols = [(f"{protocol}:{d}", d) for d in detectors]
    cols += [(f"{protocol}:{g}{GROUP_SUFFIX}", f"{g} mean") for g in groups]
    if detectors:
        cols.append((f"{protocol}:all{GROUP_SUFFIX}", "mean"))
    return cols


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list]  # raw values (None / NaN allowed)
    formats: list[str]  # per column: "s", or a format spec applied to numbers
    scale: list[float]  # per column display scale (mAP shown in %)
    row_scales: list[float] | None = None  # per row, for the last column (BD-quality units)
    csv_header: list[str] | None = None  # machine-readable column names (CSV holds raw values)
    csv_rows: list[list] | None = None

    def display(self) -> list[list[str]]:
        out = []
        for r, row in enumerate(self.rows):
            cells = []
            scales = list(self.scale)
            if self.row_scales is not None:
                scales[-1] = self.row_scales[r]
            for value, fmt, scale in zip(row, self.formats, scales):
                if fmt == "s":
                    cells.append("" if value is None else str(value))
                elif value is None or (isinstance(value, float) and math.isnan(value)):
                    cells.append("-")
                else:
                    cells.append(format(value * scale, fmt))
            out.append(cells)
        return out

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" if f == "s" else "---:" for f in self.formats) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.display()]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """Raw values in the JSON's units (mAP as a fraction), full precision."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.csv_header or self.header)
        for row in self.csv_rows or self.rows:
            writer.writerow(["" if v is None else v for v in row])
        return buf.getvalue()

    def latex(self) -> str:
        def esc(text: str) -> str:
            for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
                text = text.replace(a, b)
            return text

        spec = "".join("l" if f == "s" else "r" for f in self.formats)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(self.title)}}}",
                 rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(esc(h) for h in self.header) + r" \\",
                 r"\midrule"]
        lines += [" & ".join(esc(c) for c in r) + r" \\" for r in self.display()]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"


def results_table(curves: list[Curve], protocol: str | None) -> Table:
    """Rows (codec, quality): bpp, PSNR, MS-SSIM and the protocol's mAP columns (in %)."""
    cols = columns_for(curves, protocol) if protocol else []
    header = ["codec", "quality", "bpp", "PSNR (dB)", "MS-SSIM"] + [title for _, title in cols]
    formats = ["s", "s", ".4f", ".2f", ".4f"] + [".2f"] * len(cols)
    scale = [1, 1, 1, 1, 1] + [100.0] * len(cols)
    rows = []
    for c in curves:
        for i, q in enumerate(c.qualities):
            row = [c.name, q, c.results["bpp"][i], _get(c, "psnr-rgb", i), _get(c, "ms-ssim-rgb", i)]
            row += [_get(c, key, i) for key, _ in cols]
            rows.append(row)
    title = f"Rate, fidelity and {PROTOCOL_TITLES[protocol]} (%)" if protocol else "Rate and fidelity"
    csv_header = ["codec", "quality", "bpp", "psnr-rgb", "ms-ssim-rgb"] + [key for key, _ in cols]
    return Table(title, header, rows, formats, scale, csv_header=csv_header)


def bd_table(curves: list[Curve], anchor: Curve, protocol: str | None, method: str) -> Table:
    """Rows (codec, measure): BD-rate (%) of bpp at equal PSNR / mAP of each detector and
    group mean, and BD-quality (BD-PSNR in dB, BD-mAP in mAP points), against ``anchor``."""
    measures = [("psnr-rgb", "PSNR (dB)", 1.0)]
    measures += [(key, f"{title} (mAP points)", 100.0) for key, title in (columns_for(curves, protocol) if protocol else [])]
    header = ["codec", "measure", "BD-rate (%)", "BD-quality"]
    rows, scales, csv_rows = [], [], []
    for c in curves:
        if c.name in (anchor.name, "none"):
            continue  # the anchor itself, and the single-point uncompressed bound
        for key, title, scale in measures:
            bd = _bd_pair(anchor, c, key, method)
            rows.append([c.name, title, *bd])
            csv_rows.append([c.name, key, *bd])
            scales.append(scale)
    what = f" and {PROTOCOL_TITLES[protocol]}" if protocol else ""
    title = (f"BD-rate and BD-quality against {anchor.name} (bpp vs PSNR{what}); negative BD-rate = "
             f"fewer bits at equal quality; bjontegaard package, {method} interpolation")
    return Table(title, header, rows, ["s", "s", ".2f", ".3f"], [1, 1, 1, 1], row_scales=scales,
                 csv_header=["codec", "measure", "bd_rate_percent", "bd_quality"], csv_rows=csv_rows)


def _get(curve: Curve, key: str, i: int):
    values = curve.results.get(key)
    return values[i] if values is not None and i < len(values) else None


def _bd_pair(anchor: Curve, test: Curve, key: str, method: str) -> list[float]:
    if key not in anchor.results or key not in test.results:
        return [math.nan, math.nan]
    ra, qa = _finite(anchor, key)
    rt, qt = _finite(test, key)
    return [bd_rate(ra, qa, rt, qt, method), bd_quality(ra, qa, rt, qt, method)]


def _finite(curve: Curve, key: str) -> tuple[list[float], list[float]]:
    pairs = [(r, q) for r, q in zip(curve.results["bpp"], curve.results[key])
             if r is not None and q is not None and not math.isnan(q)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# ----------------------------------------------------------------------------- plots


def plot_rate_metric(curves: list[Curve], keys: list[tuple[str, str]], ylabel: str, path: Path,
                     scale: float = 1.0) -> None:
    """One panel per (key, title): each curve's metric against bpp (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(keys)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, dpi=100)
    for ax, (key, title) in zip(axes.flat, keys):
        for c in curves:
            if key not in c.results:
                continue
            pts = [(r, v * scale) for r, v in zip(c.results["bpp"], c.results[key]) if r is not None and v is not None]
            if c.name == "none" or not pts:
                continue
            style = "--" if c.kind == "pillow" else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", markersize=3, label=c.name)
        none = next((c for c in curves if c.name == "none" and key in c.results), None)
        if none is not None and none.results[key][0] is not None:
            ax.axhline(none.results[key][0] * scale, color="gray", linestyle=":", linewidth=1, label="uncompressed")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("bpp")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_tables.py",
        description="Markdown/CSV/LaTeX tables, BD-rate against an anchor, and rate-accuracy plots "
        "from evaluation result JSON files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("results", nargs="+", help="result JSON files (evaluate.py's OUT/*.json)")
    p.add_argument("--config", default=None, help="YAML file of defaults (section make_tables); flags win")
    p.add_argument("--anchor", default=None, help="anchor codec name; None: the zoo/base codec found")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="BD interpolation")
    p.add_argument("--out", default="tables", help="folder for the tables")
    p.add_argument("--img_dir", default="img", help="folder for the PNG plots")
    p.add_argument("--plot_protocols", nargs="*", default=list(PLOT_PROTOCOLS), choices=PROTOCOLS,
                   help="detection protocols to plot (when present); rate_psnr.png is always drawn")
    p.add_argument("--no_plots", action="store_true", help="tables only")
    return p


def make_tables(paths: list[str | Path], out_dir: str | Path, img_dir: str | Path, anchor: str | None = None,
                method: str = DEFAULT_METHOD, plot_protocols: tuple[str, ...] | None = PLOT_PROTOCOLS
                ) -> dict[str, list[Path]]:
    """Write every table, and the plots of ``plot_protocols`` (those present; None: no plots
    at all); returns {"tables": [...], "plots": [...]} paths."""
    curves = load_curves(paths)
    anchor_name = anchor or default_anchor(curves)
    by_name = {c.name: c for c in curves}
    if anchor_name not in by_name:
        raise ValueError(f"--anchor {anchor_name!r} is not among the results ({', '.join(by_name)})")
    out_dir, img_dir = Path(out_dir), Path(img_dir)
    written: dict[str, list[Path]] = {"tables": [], "plots": []}
    markdown = [f"# Results\n\nAnchor: {anchor_name}. mAP in %, BD-mAP in mAP points.\n"]
    for protocol in protocols_present(curves) or [None]:
        stem = protocol or "fidelity"
        for kind, table in (("results", results_table(curves, protocol)),
                            ("bd", bd_table(curves, by_name[anchor_name], protocol, method))):
            for suffix, text in ((".md", table.markdown()), (".csv", table.csv()), (".tex", table.latex())):
                path = out_dir / f"{kind}_{stem}{suffix}"
                atomic_write_text(path, text)
                written["tables"].append(path)
            markdown.append(table.markdown())
        if protocol and plot_protocols and protocol in plot_protocols:
            path = img_dir / f"rate_{protocol}.png"
            cols = columns_for(curves, protocol)
            plot_rate_metric(curves, cols, f"{PROTOCOL_TITLES[protocol]} (%)", path, scale=100.0)
            written["plots"].append(path)
    if plot_protocols is not None:
        path = img_dir / "rate_psnr.png"
        plot_rate_metric(curves, [("psnr-rgb", "PSNR (RGB)"), ("ms-ssim-rgb", "MS-SSIM (RGB)")], "", path)
        written["plots"].append(path)
    atomic_write_text(out_dir / "tables.md", "\n".join(markdown))
    written["tables"].append(out_dir / "tables.md")
    return written


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args_with_config(build_parser(), argv, "make_tables")
    plots = None if args.no_plots else tuple(args.plot_protocols)
    written = make_tables(args.results, args.out, args.img_dir, args.anchor, args.method, plots)
    for path in written["tables"] + written["plots"]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
