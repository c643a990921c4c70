"""make_tables on the result files of a small run: three table formats, BD-rate, plots."""

import csv
import math

import pytest
from PIL import Image
from test_evaluation_engine import (  # tests/ is on sys.path under pytest
    SquareFinder,
    square_dataset,
)

from Evaluation.engine import CodecSpec, run_evaluation
from Evaluation.make_tables import default_anchor, load_curves, main, make_tables
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
                          plot_protocols=("map-voc07",))
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
                plot_protocols=None)
    assert not (tmp_path / "img").exists()
    bd = list(csv.DictReader((tmp_path / "t" / "bd_map-voc07.csv").open()))
    assert bd[0]["measure"] == "psnr-rgb"
    assert float(bd[0]["bd_rate_percent"]) == pytest.approx(-50.0, abs=1e-6)
    assert float(bd[0]["bd_quality"]) > 0


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
