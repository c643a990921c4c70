"""Tables and plots from evaluation results: Markdown, CSV and LaTeX tables per detection
protocol (each detector, the seen and unseen group means, the mean over all), BD-rate and
BD-quality against an anchor codec, and rate-accuracy / rate-PSNR plots.

    python Evaluation/make_tables.py results/*.json --anchor bmshj2018-hyperprior-mse --out results/tables
    cd Evaluation && python make_tables.py ../results/*.json --out ../tables

Inputs: the JSON files of ``Evaluation/evaluate.py`` (curve files ``OUT/<codec>.json`` or
point files ``OUT/points/*.json``; points of one codec are merged by quality) or any
CompressAI result file with ``name`` and ``results.bpp``. The anchor defaults to the zoo
codec among the inputs (else a codec whose name says base/pretrained/anchor, else the
first learned codec, else the first file).

Outputs in ``--out``: ``results_<protocol>.{md,csv,tex}`` (one row per codec and quality),
``bd_<protocol>.{md,csv,tex}`` (one row per codec: BD-rate in % of bpp against PSNR and
against each mAP, BD-PSNR in dB and BD-mAP in mAP points, ``bjontegaard`` package with the
interpolation named in the table), ``tables.md`` (all Markdown tables), or with
``--generalization`` ``generalization.{md,csv,tex}`` (one row per axis); plots in
``--img_dir`` (default ``<--out>/img``): ``rate_psnr.png`` and ``rate_<protocol>.png`` (one
panel per detector and group mean) for ``--plot_protocols``.

Every BD-rate and BD-quality comes with a 95% interval from a paired bootstrap over images
(``--bootstrap`` resamples, ``--seed``): each resample draws the same images for the anchor,
the compared codec and every quality point; each point's bpp and PSNR are the means of the
drawn images' values and its mAP is recomputed from the per-image match records
(``icm/ap_bootstrap.py``) of the ``OUT/points/*.matches.npz`` files evaluate.py writes;
group means average the detectors' resampled mAPs; then BD-rate and BD-quality follow as for
the estimate. A resample whose curves are not monotonic has no BD: it is dropped and
counted (column ``dropped``). ``excludes 0`` says whether the interval lies on one side of
0: only then does the table show a difference.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from icm.ap_bootstrap import (
    MASK_RECORDS,
    Interval,
    PointSamples,
    bootstrap_weights,
    maps_from_matches,
    percentile_interval,
)
from icm.cli import exit_on_user_error, non_negative_int
from icm.config import parse_args_with_config
from icm.evaluation.bd_rate import (
    DEFAULT_METHOD,
    METHODS,
    bd_quality,
    bd_quality_batch,
    bd_rate,
    bd_rate_batch,
)
from icm.io import atomic_path, atomic_write_text, read_json

# Detection metric prefixes in the order tables show them.
PROTOCOLS = ("map-voc07", "map-voc12", "map-coco", "ap50-coco", "ap75-coco", "mask-map-coco", "map-oid")
PROTOCOL_TITLES = {
    "map-voc07": "VOC07 11-point mAP@0.5",
    "map-voc12": "VOC12 all-point mAP@0.5",
    "map-coco": "COCO AP@[.5:.95]",
    "ap50-coco": "COCO AP50",
    "ap75-coco": "COCO AP75",
    "mask-map-coco": "COCO mask AP@[.5:.95]",
    "map-oid": "Open Images challenge mAP@0.5",
}
GROUP_SUFFIX = "-mean"
PLOT_PROTOCOLS = ("map-voc07", "map-coco")
# Protocols the bootstrap recomputes from match records (icm/ap_bootstrap.py names).
MATCH_PROTOCOLS = {"map-voc07": "voc07", "map-voc12": "voc12", "map-coco": "coco",
                   "ap50-coco": "coco50", "ap75-coco": "coco75",
                   "mask-map-coco": "coco", "mask-ap50-coco": "coco50", "mask-ap75-coco": "coco75"}
DEFAULT_RESAMPLES = 1000
CONFIDENCE = 0.95
# More dropped (non-monotonic) resamples than this and an interval is no basis for a claim.
MAX_DROPPED = 0.1


@dataclass
class Curve:
    """One codec's points: ``results[metric][i]`` belongs to ``qualities[i]``."""

    name: str
    kind: str
    qualities: list
    results: dict[str, list]
    groups: dict[str, list[str]] = field(default_factory=dict)
    sidecars: list[Path | None] = field(default_factory=list)  # per-image records per point

    def detectors(self, protocol: str) -> list[str]:
        """Individual detectors measured with ``protocol`` (group means excluded)."""
        prefix = protocol + ":"
        return [k[len(prefix):] for k in self.results
                if k.startswith(prefix) and not k.endswith(GROUP_SUFFIX)]


def load_curves(paths: list[str | Path]) -> list[Curve]:
    """Read result files; points of the same codec name merge (a later file's point at the
    same quality wins). Curves come back in the order their names first appear. Each point
    keeps the path of its per-image records (``sidecars``/``sidecar`` in the JSON, relative
    to it), or None."""
    points: dict[str, dict] = {}
    for path in paths:
        data = read_json(path)
        if not isinstance(data, dict) or "bpp" not in data.get("results", {}):
            raise ValueError(f"{path}: not a result file (no results.bpp)")
        name = str(data.get("name") or Path(path).stem)
        results = data["results"]
        n = len(results["bpp"])
        qualities = data.get("qualities") or [None] * n
        sidecars = data.get("sidecars") or ([data["sidecar"]] if data.get("sidecar") else [])
        entry = points.setdefault(name, {"kind": data.get("codec", {}).get("kind", ""), "points": {},
                                         "groups": data.get("detector_groups", {}), "sidecars": {}})
        for i in range(n):
            key = qualities[i] if qualities[i] is not None else f"#{len(entry['points'])}"
            entry["points"][key] = {m: (v[i] if isinstance(v, list) and i < len(v) else None)
                                    for m, v in results.items()}
            sidecar = sidecars[i] if i < len(sidecars) else None
            entry["sidecars"][key] = Path(path).parent / sidecar if sidecar else None
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
            sidecars=[entry["sidecars"][q] for q, _ in items],
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
    """(result key, column title) of one protocol: each detector, then the group means that
    some result has (a group none of whose detectors has the metric has no key)."""
    detectors: list[str] = []
    for c in curves:
        detectors.extend(d for d in c.detectors(protocol) if d not in detectors)
    groups: list[str] = []
    for c in curves:
        groups.extend(g for g, members in c.groups.items() if members and g not in groups)
    cols = [(f"{protocol}:{d}", d) for d in detectors]
    means = [(f"{protocol}:{g}{GROUP_SUFFIX}", f"{g} mean") for g in groups]
    if detectors:
        means.append((f"{protocol}:all{GROUP_SUFFIX}", "mean"))
    return cols + [(key, title) for key, title in means if any(key in c.results for c in curves)]


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list]  # raw values (None / NaN allowed); a tuple is (estimate, low, high[, mark]), a str is shown as is
    formats: list[str]  # per column: "s", or a format spec applied to numbers
    scale: list[float]  # per column display scale (mAP shown in %)
    row_scales: list[float] | None = None  # per row, for column row_scale_column (BD-quality units)
    row_scale_column: int = -1
    csv_header: list[str] | None = None  # machine-readable column names (CSV holds raw values)
    csv_rows: list[list] | None = None
    notes: list[str] = field(default_factory=list)  # printed under the table

    def display(self) -> list[list[str]]:
        out = []
        for r, row in enumerate(self.rows):
            cells = []
            scales = list(self.scale)
            if self.row_scales is not None:
                scales[self.row_scale_column] = self.row_scales[r]
            for value, fmt, scale in zip(row, self.formats, scales):
                if fmt == "s" or isinstance(value, str):
                    cells.append("" if value is None else str(value))
                elif isinstance(value, tuple):
                    cells.append(_interval_text(value, fmt, scale))
                else:
                    cells.append(_number_text(value, fmt, scale))
            out.append(cells)
        return out

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" if f == "s" else "---:" for f in self.formats) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.display()]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
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
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [rf"\par\smallskip{{\footnotesize {esc(note)}}}" for note in self.notes]
        lines += [r"\end{table}"]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path, stem: str) -> list[Path]:
        """``<stem>.md``, ``.csv`` and ``.tex`` in ``out_dir``, written atomically; their paths."""
        paths = []
        for suffix, text in ((".md", self.markdown()), (".csv", self.csv()), (".tex", self.latex())):
            paths.append(out_dir / f"{stem}{suffix}")
            atomic_write_text(paths[-1], text)
        return paths


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number_text(value, fmt: str, scale: float) -> str:
    if _missing(value):
        return "-"
    text = format(value * scale, fmt)
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


def _interval_text(value: tuple, fmt: str, scale: float) -> str:
    """``estimate [low, high]``; the estimate alone when there is no interval; a fourth
    element is a mark written after it (``unstable``)."""
    estimate, low, high, *mark = value
    text = _number_text(estimate, fmt, scale)
    if not (_missing(low) or _missing(high)):
        text = f"{text} [{format(low * scale, fmt)}, {format(high * scale, fmt)}]"
    return " ".join([text, *mark])


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


def bd_table(curves: list[Curve], anchor: Curve, protocol: str | None, method: str,
             bootstrap: Bootstrap | None = None) -> Table:
    """Rows (codec, measure): BD-rate (%) of bpp at equal PSNR / mAP of each detector and
    group mean, and BD-quality (BD-PSNR in dB, BD-mAP in mAP points), against ``anchor``,
    each with its bootstrap interval (see :func:`bootstrap_curves`) where there is one."""
    measures = [("psnr-rgb", "PSNR (dB)", 1.0)]
    measures += [(key, f"{title} (mAP points)", 100.0) for key, title in (columns_for(curves, protocol) if protocol else [])]
    pct = f"{CONFIDENCE:.0%}"
    header = ["codec", "measure", f"BD-rate (%) [{pct} CI]", "excludes 0", f"BD-quality [{pct} CI]", "excludes 0",
              "dropped (rate/quality)"]
    csv_header = ["codec", "measure"] + [f"{name}{suffix}" for name in ("bd_rate_percent", "bd_quality")
                                         for suffix in ("", "_low", "_high", "_excludes_0", "_dropped")]
    rows, scales, csv_rows = [], [], []
    for c in curves:
        if c.name in (anchor.name, "none"):
            continue  # the anchor itself, and the single-point uncompressed bound
        for key, title, scale in measures:
            estimates = _bd_pair(anchor, c, key, method)
            intervals = bootstrap.intervals(anchor, c, key, estimates) if bootstrap else (None, None)
            row, csv_row = [c.name, title], [c.name, key]
            for estimate, ci in zip(estimates, intervals):
                low, high = (ci.low, ci.high) if ci else (None, None)
                excludes = _excludes_zero(estimate, ci)
                row += [(estimate, low, high), excludes]
                csv_row += [estimate, low, high, excludes, ci.dropped if ci else None]
            row.append(f"{intervals[0].dropped}/{intervals[1].dropped}" if intervals[0] and intervals[1] else None)
            rows.append(row)
            csv_rows.append(csv_row)
            scales.append(scale)
    what = f" and {PROTOCOL_TITLES[protocol]}" if protocol else ""
    title = (f"BD-rate and BD-quality against {anchor.name} (bpp vs PSNR{what}); negative BD-rate = "
             f"fewer bits at equal quality; bjontegaard package, {method} interpolation")
    notes = bootstrap.describe(protocol) if bootstrap else ["no intervals (--bootstrap 0)"]
    return Table(title, header, rows, ["s", "s", ".2f", "s", ".3f", "s", "s"], [1] * 7, row_scales=scales,
                 row_scale_column=4, csv_header=csv_header, csv_rows=csv_rows, notes=notes)


def generalization_table(axes: list[tuple[str, list[str | Path], str]], test: str, references: list[str],
                         method: str = DEFAULT_METHOD, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Table:
    """One row per generalization axis (name, result JSON files, metric key): the BD-rate (%)
    and BD-quality of codec ``test`` against each of ``references`` on that axis's metric,
    with paired bootstrap intervals over that axis's images. An axis whose files lack the
    metric or a codec gets a row saying so."""
    pct = f"{CONFIDENCE:.0%}"
    header = ["axis", "measure"] + [f"vs {r}: {what} [{pct} CI]" for r in references
                                    for what in ("BD-rate (%)", "BD-quality")]
    csv_header = ["axis", "measure"] + [f"vs_{r}_{name}{suffix}" for r in references
                                        for name in ("bd_rate_percent", "bd_quality")
                                        for suffix in ("", "_low", "_high", "_note")]
    rows, csv_rows, notes, unstable = [], [], [], False
    for axis, paths, key in axes:
        scale = 1.0 if key == "psnr-rgb" else 100.0
        curves = load_curves(paths)
        by_name = {c.name: c for c in curves}
        missing = [n for n in [test, *references] if n not in by_name]
        if missing or not any(key in c.results for c in curves):
            what = f"codecs {', '.join(missing)}" if missing else f"metric {key}"
            rows.append([axis, key] + [None] * (2 * len(references)))
            csv_rows.append([axis, key] + [None] * (8 * len(references)))
            notes.append(f"{axis}: no result ({what} not in its files)")
            continue
        row, csv_row = [axis, key], [axis, key]
        for reference in references:
            anchor = by_name[reference]
            # only the two compared curves are resampled, not every codec of the folder
            boot = bootstrap_curves([by_name[test]], anchor, resamples, seed, method) if resamples else None
            estimates = _bd_pair(anchor, by_name[test], key, method)
            intervals = boot.intervals(anchor, by_name[test], key, estimates) if boot else (None, None)
            if boot and intervals == (None, None):
                notes.append(f"{axis}: no interval against {reference}: no per-image records of {key} "
                             f"(points evaluated before evaluate.py kept them?)")
            for estimate, ci, unit in zip(estimates, intervals, (1.0, scale)):  # BD-quality in points or dB
                if _missing(estimate):
                    row.append("unstable")  # no BD (a curve is not monotonic), whatever the resamples say
                    csv_row += [None, None, None, "unstable"]
                    unstable = True
                    continue
                values = tuple(None if _missing(v) else v * unit
                               for v in (estimate, *((ci.low, ci.high) if ci else (None, None))))
                csv_row += [*values, None]
                if _excludes_zero(estimate, ci) == "unstable":
                    values, unstable, csv_row[-1] = (*values, "unstable"), True, "unstable"
                row.append(values)
        rows.append(row)
        csv_rows.append(csv_row)
        images = boot.num_images if resamples and boot else "?"
        notes.append(f"{axis}: {key} on {images} images")
    if unstable:
        notes.append(f"unstable = no claim: the estimate has no BD (a curve is not monotonic) or more than "
                     f"{MAX_DROPPED:.0%} of the resamples had none")
    formats = ["s", "s"] + [".2f", ".3f"] * len(references)
    return Table(f"Generalization of {test}: BD-rate (%) and BD-quality (mAP points; PSNR in dB) per axis, "
                 f"{method} interpolation", header, rows, formats, [1.0] * len(formats), csv_header=csv_header,
                 csv_rows=csv_rows, notes=notes)


def _excludes_zero(estimate: float, ci: Interval | None) -> str | None:
    """'yes' / 'no', or 'unstable' where no claim can be made: the estimate itself has no BD
    (a curve is not monotonic) or more than MAX_DROPPED of the resamples had none."""
    if ci is None or _missing(ci.low):
        return None
    if _missing(estimate) or ci.dropped > MAX_DROPPED * (ci.resamples + ci.dropped):
        return "unstable"
    return "yes" if ci.excludes_zero else "no"


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
    points = _finite_points(curve, key)
    return [curve.results["bpp"][i] for i in points], [curve.results[key][i] for i in points]


def _finite_points(curve: Curve, key: str) -> list[int]:
    """Indices of the points with a rate and a value of ``key``."""
    return [i for i, (r, q) in enumerate(zip(curve.results["bpp"], curve.results[key]))
            if r is not None and q is not None and not math.isnan(q)]


# ----------------------------------------------------------------------------- bootstrap


@dataclass
class Bootstrap:
    """Resampled points of the anchor and the compared curves: ``values[codec][key]`` is a
    [resamples, points] array (``bpp``, ``psnr-rgb``, each ``<protocol>:<detector>`` of the
    protocols in :data:`MATCH_PROTOCOLS` and their group means); ``notes`` say where
    intervals are missing and why."""

    resamples: int
    seed: int
    num_images: int
    method: str
    values: dict[str, dict[str, np.ndarray]]
    notes: list[str]

    def intervals(self, anchor: Curve, test: Curve, key: str,
                  estimates: list[float]) -> tuple[Interval | None, Interval | None]:
        """Intervals of BD-rate and BD-quality of ``test`` against ``anchor`` on ``key``."""
        a, t = self.values.get(anchor.name, {}), self.values.get(test.name, {})
        if not all(k in v for k in (key, "bpp") for v in (a, t)):
            return None, None
        pa, pt = _finite_points(anchor, key), _finite_points(test, key)
        curves = a["bpp"][:, pa], a[key][:, pa], t["bpp"][:, pt], t[key][:, pt]
        rate = bd_rate_batch(*curves, method=self.method)
        quality = bd_quality_batch(*curves, method=self.method)
        return (percentile_interval(rate, estimates[0], CONFIDENCE),
                percentile_interval(quality, estimates[1], CONFIDENCE))

    def describe(self, protocol: str | None) -> list[str]:
        """The notes under a BD table of ``protocol``."""
        notes = [f"[{CONFIDENCE:.0%} CI]: percentile interval of a paired bootstrap over the {self.num_images} "
                 f"images ({self.resamples} resamples, seed {self.seed}; the same images for both codecs and "
                 "every point). 'excludes 0': yes = the difference to the anchor is outside the noise of the "
                 "image sample; no = not distinguishable; unstable = no claim: the estimate has no BD or "
                 f"more than {MAX_DROPPED:.0%} of the resamples were dropped. 'dropped': resamples whose curves "
                 "are not monotonic (no BD), left out of the interval."]
        if protocol and protocol not in MATCH_PROTOCOLS:
            notes.append(f"{PROTOCOL_TITLES[protocol]}: no per-image records for this protocol; intervals "
                         "for PSNR only.")
        return notes + self.notes


def bootstrap_curves(curves: list[Curve], anchor: Curve, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     method: str = DEFAULT_METHOD) -> Bootstrap:
    """Resample the anchor's and every compared curve's points over the same images (see the
    module docstring). Curves whose points lack per-image records, or cover other images
    than the anchor's, get no values and a note."""
    notes: list[str] = []
    compared = [anchor] + [c for c in curves if c.name not in (anchor.name, "none")]
    loaded: dict[str, list[PointSamples]] = {}
    for c in compared:
        missing = [str(q) for q, path in zip(c.qualities, c.sidecars) if path is None or not Path(path).is_file()]
        if len(c.sidecars) < len(c.qualities) or missing:
            notes.append(f"{c.name}: no intervals: no per-image records (.matches.npz) for quality "
                         f"{', '.join(missing) or '?'} (result files made before evaluate.py wrote them?)")
            continue
        loaded[c.name] = [PointSamples.load(path) for path in c.sidecars]
    ids = loaded[anchor.name][0].image_ids if anchor.name in loaded else None
    for name, samples in list(loaded.items()):
        if any(not np.array_equal(s.image_ids, ids) for s in samples):
            notes.append(f"{name}: no intervals: its points were not all evaluated on the anchor's images "
                         "in the anchor's order")
            del loaded[name]
    if anchor.name not in loaded:
        notes.append(f"anchor {anchor.name}: no per-image records on one set of images, so no intervals at all")
        return Bootstrap(resamples, seed, 0 if ids is None else len(ids), method, {}, notes)
    weights = bootstrap_weights(len(ids), resamples, seed)
    protocols = {key: MATCH_PROTOCOLS[key] for key in protocols_present(curves) if key in MATCH_PROTOCOLS}
    values = {c.name: _resample_curve(c, loaded[c.name], weights, protocols) for c in compared if c.name in loaded}
    return Bootstrap(resamples, seed, len(ids), method, values, notes)


def _resample_curve(curve: Curve, samples: list[PointSamples], weights: np.ndarray,
                    protocols: dict[str, str]) -> dict[str, np.ndarray]:
    """[B, points] resampled bpp, PSNR, mAP per detector and group mean of one curve."""
    num_images = weights.shape[1]
    shares = weights / num_images  # a resample's mean of per-image values: shares @ values
    values = {metric: np.stack([shares @ s.per_image[metric] for s in samples], axis=1)
              for metric in ("bpp", "psnr-rgb") if all(metric in s.per_image for s in samples)}
    for i, s in enumerate(samples):
        for detector, records in s.matches.items():
            is_mask = detector.startswith(MASK_RECORDS)  # instance-mask records: the mask- keys only
            detector = detector.removeprefix(MASK_RECORDS)
            keys = {k: v for k, v in protocols.items() if k.startswith("mask-") == is_mask}
            maps = maps_from_matches(records, sorted(set(keys.values())), weights)
            for key, name in keys.items():
                values.setdefault(f"{key}:{detector}", np.full((len(weights), len(samples)), np.nan))[:, i] = maps[name]
    for key in protocols:  # group means as the engine takes them, per resample
        detectors = curve.detectors(key)
        groups = {**{g: [d for d in members if d in detectors] for g, members in curve.groups.items()},
                  "all": detectors}
        for group, members in groups.items():
            resampled = [values.get(f"{key}:{d}") for d in members]
            if members and all(r is not None for r in resampled):
                stacked = np.stack(resampled)
                count = np.isfinite(stacked).sum(0)
                with np.errstate(invalid="ignore"):
                    values[f"{key}:{group}{GROUP_SUFFIX}"] = np.nansum(stacked, 0) / np.where(count, count, np.nan)
    return values


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
    p.add_argument("results", nargs="*", help="result JSON files (evaluate.py's OUT/*.json)")
    p.add_argument("--generalization", nargs="+", default=None, metavar="AXIS=DIR:KEY",
                   help="instead: one row per axis, codec --test against each of --references on metric KEY of "
                   "the results in evaluation folder DIR (e.g. 'unseen domain=runs/x/eval_shifted:map-voc07:all-mean'), "
                   "written to <--out>/generalization.{md,csv,tex} (the CSV with low and high columns)")
    p.add_argument("--test", default="maa", help="the codec the generalization table is about")
    p.add_argument("--references", nargs="+", default=["anchor", "control"],
                   help="the codecs it is compared with in the generalization table")
    p.add_argument("--config", default=None, help="YAML file of defaults (section make_tables); flags win")
    p.add_argument("--anchor", default=None, help="anchor codec name; None: the zoo/base codec found")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="BD interpolation")
    p.add_argument("--out", default="tables", help="folder for the tables")
    p.add_argument("--img_dir", default=None, help="folder for the PNG plots; None: <--out>/img")
    p.add_argument("--plot_protocols", nargs="*", default=list(PLOT_PROTOCOLS), choices=PROTOCOLS,
                   help="detection protocols to plot (when present); rate_psnr.png is always drawn")
    p.add_argument("--no_plots", action="store_true", help="tables only")
    p.add_argument("--bootstrap", type=non_negative_int, default=DEFAULT_RESAMPLES, metavar="N",
                   help=f"resamples of the paired bootstrap over images behind the {CONFIDENCE:.0%}% intervals "
                   "of every BD-rate and BD-quality (needs evaluate.py's OUT/points/*.matches.npz); 0: no "
                   "intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap's image draws")
    return p


def make_tables(paths: list[str | Path], out_dir: str | Path, img_dir: str | Path | None = None,
                anchor: str | None = None, method: str = DEFAULT_METHOD,
                plot_protocols: tuple[str, ...] | None = PLOT_PROTOCOLS, resamples: int = DEFAULT_RESAMPLES,
                seed: int = 0) -> dict[str, list[Path]]:
    """Write every table (BD tables with bootstrap intervals of ``resamples`` resamples; 0:
    none), and the plots of ``plot_protocols`` (those present; None: no plots at all) into
    ``img_dir`` (None: ``out_dir/img``); returns {"tables": [...], "plots": [...]} paths."""
    curves = load_curves(paths)
    anchor_name = anchor or default_anchor(curves)
    by_name = {c.name: c for c in curves}
    if anchor_name not in by_name:
        raise ValueError(f"--anchor {anchor_name!r} is not among the results ({', '.join(by_name)})")
    out_dir = Path(out_dir)
    img_dir = out_dir / "img" if img_dir is None else Path(img_dir)
    boot = bootstrap_curves(curves, by_name[anchor_name], resamples, seed, method) if resamples else None
    written: dict[str, list[Path]] = {"tables": [], "plots": []}
    markdown = [f"# Results\n\nAnchor: {anchor_name}. mAP in %, BD-mAP in mAP points.\n"]
    for protocol in protocols_present(curves) or [None]:
        stem = protocol or "fidelity"
        for kind, table in (("results", results_table(curves, protocol)),
                            ("bd", bd_table(curves, by_name[anchor_name], protocol, method, boot))):
            written["tables"] += table.write(out_dir, f"{kind}_{stem}")
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
    if args.generalization:
        axes = []
        for item in args.generalization:
            axis, sep, rest = item.partition("=")
            folder, sep2, key = rest.partition(":")
            if not (sep and sep2 and axis and key):
                raise ValueError(f"--generalization {item!r}: expected AXIS=DIR:KEY")
            paths = sorted(str(p) for p in Path(folder).glob("*.json"))
            if not paths:
                raise ValueError(f"--generalization {item!r}: no result JSON files in {folder}")
            axes.append((axis, paths, key))
        table = generalization_table(axes, args.test, args.references, args.method, args.bootstrap, args.seed)
        print(table.write(Path(args.out), "generalization")[0])
        return 0
    if not args.results:
        raise ValueError("give result JSON files (or --generalization)")
    plots = None if args.no_plots else tuple(args.plot_protocols)
    written = make_tables(args.results, args.out, args.img_dir, args.anchor, args.method, plots,
                          args.bootstrap, args.seed)
    for path in written["tables"] + written["plots"]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
