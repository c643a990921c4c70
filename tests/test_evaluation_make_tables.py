"""make_tables on the result files of a small run: three table formats, BD-rate with
bootstrap intervals, plots."""

import csv
import math

import numpy as np
import pytest
from helpers import SquareFinder, square_dataset
from PIL import Image

from icm.ap_bootstrap import Interval, PointSamples, image_matches, map_from_matches
from icm.evaluation.engine import CodecSpec, run_evaluation
from icm.evaluation.make_tables import (
    bootstrap_curves,
    build_parser,
    default_anchor,
    generalization_table,
    load_curves,
    main,
    make_tables,
)
from icm.io import atomic_write_json, read_json


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    dataset = square_dataset(tmp, n=3)
    detectors = {"seen_det": SquareFinder(["square"]), "unseen_det": SquareFinder(["square"], threshold=0.5)}
    specs = [CodecSpec("none", "none"), CodecSpec("pillow", "jpeg", [5, 30, 90]), CodecSpec("pillow", "webp", [5, 30, 90])]
    out = tmp / "out"
    run_evaluation(specs, dataset, detectors, out, {"dataset": "squares"}, progress=False,
                   groups={"seen": ["seen_det"], "unseen": ["unseen_det"]})
    return out


def test_tables_and_plots_from_a_small_run(small_run, tmp_path):
    files = sorted(small_run.glob("*.json"))
    assert [f.name for f in files] == ["jpeg.json", "none.json", "webp.json"]
    written = make_tables(files, tmp_path / "tables", tmp_path / "img", anchor="jpeg", method="akima",
                          plot_protocols=("map-voc07",), resamples=200)
    names = {p.name for p in written["tables"]}
    for stem in ("results_map-voc07", "bd_map-voc07", "results_map-coco", "bd_map-coco"):
        assert {stem + ".md", stem + ".csv", stem + ".tex"} <= names
    md = (tmp_path / "tables" / "results_map-voc07.md").read_text()
    assert "| seen_det | unseen_det | seen mean | unseen mean | mean |" in md
    rows = list(csv.DictReader((tmp_path / "tables" / "results_map-voc07.csv").open()))
    assert [r["codec"] for r in rows] == ["jpeg", "jpeg", "jpeg", "none", "webp", "webp", "webp"]
    jpeg = read_json(small_run / "jpeg.json")
    assert [float(r["bpp"]) for r in rows[:3]] == pytest.approx(jpeg["results"]["bpp"])
    assert float(rows[3]["map-voc07:seen_det"]) == pytest.approx(1.0)  # the uncompressed bound finds every square
    bd = list(csv.DictReader((tmp_path / "tables" / "bd_map-voc07.csv").open()))
    assert {r["codec"] for r in bd} == {"webp"}  # neither the anchor nor the single-point bound
    assert [r["measure"] for r in bd] == ["psnr-rgb", "map-voc07:seen_det", "map-voc07:unseen_det",
                                          "map-voc07:seen-mean", "map-voc07:unseen-mean", "map-voc07:all-mean"]
    assert not math.isnan(float(bd[0]["bd_rate_percent"]))
    # every BD of webp has its interval (3 images: a coarse one), containing the estimate
    psnr = bd[0]
    for what in ("bd_rate_percent", "bd_quality"):
        low, estimate, high = (float(psnr[what + s]) for s in ("_low", "", "_high"))
        assert low <= estimate <= high and low < high
        assert psnr[what + "_excludes_0"] == ("yes" if low > 0 or high < 0 else "no")
        assert int(psnr[what + "_dropped"]) == 0  # bpp and PSNR rise with quality in every resample
    assert all(r["bd_quality_low"] != "" for r in bd)
    md = (tmp_path / "tables" / "bd_map-voc07.md").read_text()
    assert "| BD-rate (%) [95% CI] | excludes 0 | BD-quality [95% CI] | excludes 0 | dropped (rate/quality) |" in md
    assert f"{float(psnr['bd_rate_percent']):.2f} [{float(psnr['bd_rate_percent_low']):.2f}, " in md
    assert "paired bootstrap over the 3 images (200 resamples, seed 0" in md
    tex = (tmp_path / "tables" / "bd_map-voc07.tex").read_text()
    assert "akima interpolation" in tex and r"\begin{tabular}" in tex and "seen\\_det" in tex
    for png in written["plots"]:
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width >= 400 and img.height >= 300
    assert {p.name for p in written["plots"]} == {"rate_psnr.png", "rate_map-voc07.png"}


def test_bd_rate_of_a_half_rate_copy_is_minus_50(tmp_path, small_run):
    jpeg = read_json(small_run / "jpeg.json")
    better = dict(jpeg, name="half", codec={"kind": "checkpoint"})
    better["results"] = dict(jpeg["results"], bpp=[b / 2 for b in jpeg["results"]["bpp"]])
    atomic_write_json(tmp_path / "half.json", better)
    make_tables([small_run / "jpeg.json", tmp_path / "half.json"], tmp_path / "t", tmp_path / "img", anchor="jpeg",
                plot_protocols=None, resamples=50)
    assert not (tmp_path / "img").exists()
    bd = list(csv.DictReader((tmp_path / "t" / "bd_map-voc07.csv").open()))
    assert bd[0]["measure"] == "psnr-rgb"
    assert float(bd[0]["bd_rate_percent"]) == pytest.approx(-50.0, abs=1e-6)
    assert float(bd[0]["bd_quality"]) > 0
    # half.json's sidecar paths lead nowhere from tmp_path: no intervals, and a note says why
    assert bd[0]["bd_rate_percent_low"] == "" and bd[0]["bd_rate_percent_excludes_0"] == ""
    md = (tmp_path / "t" / "bd_map-voc07.md").read_text()
    assert "| half | PSNR (dB) | -50.00 |  | " in md
    assert "half: no intervals: no per-image records (.matches.npz) for quality 5, 30, 90" in md


def test_points_merge_and_default_anchor(small_run):
    curves = load_curves(sorted((small_run / "points").glob("*.json")))
    assert {c.name: len(c.qualities) for c in curves} == {"jpeg": 3, "none": 1, "webp": 3}
    assert default_anchor(curves) == "jpeg"  # no zoo or learned codec among them
    with_zoo = curves + [type(curves[0])("bmshj2018-hyperprior-mse", "zoo", [1], {"bpp": [0.1]})]
    assert default_anchor(with_zoo) == "bmshj2018-hyperprior-mse"


def test_cli_errors_are_one_line(tmp_path, small_run, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(small_run / "jpeg.json"), "--anchor", "nope", "--out", str(tmp_path / "t"),
              "--img_dir", str(tmp_path / "i")])
    assert e.value.code == 2 and "'nope' is not among the results" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad.json")])
    assert "not a result file" in capsys.readouterr().err


def test_missing_sidecar_still_loads_with_a_note(small_run, tmp_path):
    sidecar = small_run / "points" / "webp-q30.matches.npz"
    kept = sidecar.read_bytes()
    sidecar.unlink()
    try:
        make_tables(sorted(small_run.glob("*.json")), tmp_path / "t", anchor="jpeg", plot_protocols=None,
                    resamples=20)
    finally:
        sidecar.write_bytes(kept)
    bd = list(csv.DictReader((tmp_path / "t" / "bd_map-coco.csv").open()))
    assert bd and all(r["bd_quality_low"] == "" for r in bd) and bd[0]["bd_quality"] != ""
    assert "webp: no intervals: no per-image records (.matches.npz) for quality 30" in (
        tmp_path / "t" / "tables.md").read_text()


def test_plots_default_into_out_and_bootstrap_flags(small_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([str(small_run / "jpeg.json"), str(small_run / "webp.json"), "--out", "t", "--bootstrap", "0",
                 "--plot_protocols", "map-voc07"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # nothing outside --out
    assert sorted(p.name for p in (tmp_path / "t" / "img").iterdir()) == ["rate_map-voc07.png", "rate_psnr.png"]
    assert "- no intervals (--bootstrap 0)" in (tmp_path / "t" / "bd_map-voc07.md").read_text()
    helptext = build_parser().format_help()
    assert "--bootstrap N" in helptext and "(default: 1000)" in helptext and "<--out>/img" in helptext
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([str(small_run / "jpeg.json"), "--bootstrap", "-1"])
    assert "argument --bootstrap: -1: give 0 or more" in capsys.readouterr().err


# ----------------------------------------------------------------------------- synthetic codecs

NUM_IMAGES, QUALITIES = 80, (1, 2, 3, 4)


def synthetic_codec(folder, name, found, bpp_scale=1.0, seed=0, masks=False):
    """Point files and sidecars of a codec whose detector finds each object with
    probability ``found[q]`` at quality q (one detector, one class, 80 images; the images
    and their objects are the same for every codec). ``masks``: the detector is a mask
    model too, with mask records (here its box records again) and ``mask-map-coco``."""
    world = np.random.default_rng(123)
    base = world.uniform(0.5, 1.5, NUM_IMAGES)
    gts = []
    for _ in range(NUM_IMAGES):
        m = int(world.integers(1, 3))
        xy = world.uniform(0, 60, (m, 2))
        gts.append({"boxes": np.concatenate([xy, xy + 20], 1), "labels": np.zeros(m, int)})
    rng = np.random.default_rng(seed)
    for q, p in zip(QUALITIES, found):
        dets = []
        for g in gts:
            hit = rng.random(len(g["boxes"])) < p
            boxes = [g["boxes"][hit] + rng.normal(0, 1, (int(hit.sum()), 4)), world.uniform(0, 60, (2, 2)).repeat(2, 1)]
            boxes[1][:, 2:] += 15
            dets.append({"boxes": np.concatenate(boxes), "labels": np.zeros(int(hit.sum()) + 2, int),
                         "scores": np.concatenate([rng.uniform(0.3, 1, int(hit.sum())), rng.uniform(0, 0.8, 2)])})
        records = image_matches(gts, dets, 1)
        bpp = base * 2.0**q / 8 * bpp_scale
        psnr = 26 + 2 * q + base
        results = {"bpp": [bpp.mean()], "psnr-rgb": [psnr.mean()]}
        results["map-voc07:det"] = results["map-voc07:all-mean"] = [map_from_matches(records, "voc07")]
        matches = {"det": records}
        if masks:
            matches["mask:det"] = records
            results["mask-map-coco:det"] = [map_from_matches(records, "coco")]
        stem = f"{name}-q{q}"
        PointSamples(records.image_ids, {"bpp": bpp, "psnr-rgb": psnr}, matches).save(
            folder / f"{stem}.matches.npz")
        atomic_write_json(folder / f"{stem}.json", {"name": name, "codec": {"kind": "checkpoint"}, "qualities": [q],
                                                    "results": results, "sidecar": f"{stem}.matches.npz"})
    return sorted(folder.glob(f"{name}-q*.json"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    found = (0.35, 0.55, 0.75, 0.9)
    files = synthetic_codec(folder, "anchor", found)
    files += synthetic_codec(folder, "copy", found)  # the anchor again, another name
    files += synthetic_codec(folder, "redraw", found, seed=1)  # the same codec, other detection noise
    files += synthetic_codec(folder, "better", [p + 0.1 for p in found], seed=2)
    files += synthetic_codec(folder, "flat", (0.35, 0.62, 0.64, 0.9), seed=3)  # q2 and q3 hardly differ
    return folder, files


def test_intervals_of_the_same_a_better_and_a_flat_codec(synthetic, tmp_path):
    folder, files = synthetic
    make_tables(files, tmp_path, anchor="anchor", plot_protocols=None, resamples=400, seed=5)
    rows = {(r["codec"], r["measure"]): r for r in csv.DictReader((tmp_path / "bd_map-voc07.csv").open())}

    def interval(codec, measure, what):
        r = rows[(codec, measure)]
        return tuple(float(r[what + s]) for s in ("_low", "", "_high")) + (r[what + "_excludes_0"],)

    for measure in ("psnr-rgb", "map-voc07:det"):  # the anchor under another name: exactly 0
        assert interval("copy", measure, "bd_rate_percent") == (0.0, 0.0, 0.0, "no")
    low, estimate, high, excludes = interval("redraw", "map-voc07:det", "bd_quality")
    assert low < 0 < high and excludes == "no" and low <= estimate <= high
    assert high - low < 0.15  # BD-mAP within about +-6 mAP points on 80 images
    low, estimate, high, excludes = interval("better", "map-voc07:det", "bd_quality")
    assert 0 < low <= estimate <= high and excludes == "yes"  # +10% recall: more mAP at equal bpp
    low, estimate, high, excludes = interval("better", "map-voc07:det", "bd_rate_percent")
    assert low <= estimate <= high < 0 and excludes == "yes"
    # flat: q2 and q3 swap places in some resamples -> no BD-rate there (BD-quality needs
    # only the rate to be monotonic)
    flat = rows[("flat", "map-voc07:det")]
    curves = load_curves(files)
    by_name = {c.name: c for c in curves}
    boot = bootstrap_curves(curves, by_name["anchor"], 400, seed=5)
    flat_bad, anchor_bad = ((np.diff(boot.values[c]["map-voc07:det"], axis=1) <= 0).any(1)  # points by bpp
                            for c in ("flat", "anchor"))
    not_monotonic = int((flat_bad | anchor_bad).sum())
    assert anchor_bad.sum() < 20 < flat_bad.sum() < 380
    assert int(flat["bd_rate_percent_dropped"]) == not_monotonic
    assert int(flat["bd_quality_dropped"]) == 0
    # more than 10% of the resamples dropped: no claim either way
    assert flat["bd_rate_percent_excludes_0"] == ("unstable" if not_monotonic > 40 else flat["bd_rate_percent_excludes_0"])
    assert flat["bd_quality_excludes_0"] in ("yes", "no")
    from icm.evaluation.make_tables import _excludes_zero

    assert _excludes_zero(-5.0, Interval(-5.0, -8.0, -2.0, 950, 50)) == "yes"
    assert _excludes_zero(-5.0, Interval(-5.0, -8.0, -2.0, 850, 150)) == "unstable"
    assert _excludes_zero(math.nan, Interval(math.nan, -8.0, -2.0, 1000, 0)) == "unstable"
    assert _excludes_zero(1.0, Interval(1.0, -1.0, 2.0, 1000, 0)) == "no"
    md = (tmp_path / "bd_map-voc07.md").read_text()
    assert "| flat | det (mAP points) | " in md and f"| {not_monotonic}/0 |" in md
    # the full-sample value of every resampled array is the JSON's
    assert map_from_matches(PointSamples.load(folder / "flat-q2.matches.npz").matches["det"], "voc07") == pytest.approx(
        read_json(folder / "flat-q2.json")["results"]["map-voc07:det"][0])


def test_generalization_table_has_one_row_per_axis_with_intervals(synthetic, tmp_path):
    from icm.evaluation.make_tables import main

    folder, _ = synthetic
    assert main(["--generalization", f"models={folder}:map-voc07:det", f"fidelity={folder}:psnr-rgb",
                 f"task={folder}:mask-map-coco:det", "--test", "better", "--references", "anchor", "copy",
                 "--bootstrap", "200", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "generalization.md").read_text()
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    models = lines["models"].rstrip(" |").split(" | ")
    # better vs anchor and vs copy (the anchor again): the same estimates, more mAP at equal bpp
    assert models[2] == models[4] and models[3] == models[5] and float(models[3].split()[0]) > 0
    low = float(models[3].split("[")[1].split(",")[0])
    assert low > 0  # +10% recall is outside the noise of 80 images
    assert lines["fidelity"].split(" | ")[2].startswith("0.00")  # same PSNR and bpp: BD-rate 0
    assert "task: no result (metric mask-map-coco:det not in its files)" in md
    # the CSV gives each interval as three numeric columns, not a Python tuple
    with open(tmp_path / "generalization.csv", newline="") as f:
        csv_rows = {row["axis"]: row for row in csv.DictReader(f)}
    bd = csv_rows["models"]
    assert "(" not in "".join(bd.values())
    for name in ("vs_anchor_bd_rate_percent", "vs_copy_bd_quality"):
        assert float(bd[f"{name}_low"]) <= float(bd[name]) <= float(bd[f"{name}_high"])
    assert float(bd["vs_anchor_bd_quality_low"]) == pytest.approx(low, abs=1e-3)  # in points, as displayed
    assert csv_rows["task"]["vs_anchor_bd_rate_percent"] == ""
    with pytest.raises(SystemExit):
        main(["--generalization", "no-colon-here", "--out", str(tmp_path)])


def mask_codec_pair(tmp_path):
    """Point files of ``anchor`` and ``better`` (+10% recall) whose detector is a mask model too."""
    folder = tmp_path / "points"
    folder.mkdir()
    found = (0.35, 0.55, 0.75, 0.9)
    files = synthetic_codec(folder, "anchor", found, masks=True)
    return files + synthetic_codec(folder, "better", [p + 0.1 for p in found], seed=2, masks=True)


def test_mask_ap_is_resampled_from_mask_records(tmp_path):
    files = mask_codec_pair(tmp_path)
    curves = load_curves(files)
    by_name = {c.name: c for c in curves}
    boot = bootstrap_curves(curves, by_name["anchor"], 300, seed=1)
    values = boot.values["better"]
    assert "mask-map-coco:det" in values and "map-voc07:mask:det" not in values
    assert values["mask-map-coco:det"].shape == (300, len(QUALITIES)) and np.isfinite(values["mask-map-coco:det"]).all()
    table = generalization_table([("task", files, "mask-map-coco:det")], "better", ["anchor"], resamples=300, seed=1)
    cells = [cell[:3] for cell in table.rows[0][2:]]  # a fourth element would be the "unstable" mark
    assert all(None not in cell for cell in cells)  # estimates and intervals
    (_, low, high), (quality, q_low, q_high) = cells
    assert high < 0 and 0 < q_low <= quality <= q_high  # +10% recall: less rate, more mask AP
    if any(len(cell) > 3 for cell in table.rows[0][2:]):  # many resamples without BD: marked and explained
        assert "unstable" in table.display()[0][2] + table.display()[0][3]
        assert any(note.startswith("unstable = no claim") for note in table.notes)


def test_tables_of_a_metric_no_group_has_take_no_mean_columns(tmp_path):
    # evaluate.py writes no group mean for a metric none of a group's detectors has (mask AP
    # of box-only detectors): the mask tables show the mask model alone, the box tables the mean
    files = mask_codec_pair(tmp_path)
    written = make_tables(files, tmp_path / "tables", resamples=50)
    names = {p.name for p in written["tables"]}
    assert {"bd_mask-map-coco.csv", "bd_map-voc07.csv"} <= names
    mask_results = (tmp_path / "tables" / "results_mask-map-coco.csv").read_text().splitlines()[0].split(",")
    box_results = (tmp_path / "tables" / "results_map-voc07.csv").read_text().splitlines()[0].split(",")
    assert mask_results[-1] == "mask-map-coco:det" and box_results[-1] == "map-voc07:all-mean"
    mask_bd = (tmp_path / "tables" / "bd_mask-map-coco.csv").read_text()
    assert "mask-map-coco:det" in mask_bd and "all-mean" not in mask_bd


def test_generalization_cell_without_bd_estimate_says_unstable(tmp_path):
    folder = tmp_path / "points"
    folder.mkdir()
    files = synthetic_codec(folder, "anchor", (0.35, 0.55, 0.75, 0.9))
    files += synthetic_codec(folder, "dip", (0.45, 0.8, 0.5, 0.95), seed=2)  # mAP not monotonic in rate
    table = generalization_table([("models", files, "map-voc07:det")], "dip", ["anchor"], resamples=100, seed=1)
    rate, quality = table.rows[0][2:]
    assert rate == "unstable"  # no BD-rate on a curve that is not monotonic: no "- [low, high]"
    assert isinstance(quality, tuple) and None not in quality  # BD-mAP is still defined
    cells = table.display()[0]
    assert cells[2] == "unstable" and "[" in cells[3]
    csv_line = table.csv().splitlines()[1].split(",")
    assert csv_line[2:6] == ["", "", "", "unstable"]  # no estimate, no interval, the reason
    assert [float(v) for v in csv_line[6:9]] == pytest.approx(quality[:3])
    assert any(note.startswith("unstable = no claim") for note in table.notes)
