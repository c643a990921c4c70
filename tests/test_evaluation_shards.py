"""Evaluation in shards (``--shard I/N``) and their merge (``--merge``): the result files of
one unsharded run."""

import math
from pathlib import Path

import pytest

from icm.data import make_toy_dataset
from icm.evaluation.evaluate import main
from icm.io import read_json

ROOT = Path(__file__).resolve().parent.parent
TIMINGS = ("encoding_time", "decoding_time")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", train=1, val=7, size=96)


def run(toy, out, *extra):
    argv = ["--config", "", "--dataset", "toy", "--data_root", str(toy), "--split", "val",
            "--codecs", "none", "jpeg=30,70",
            "--seen_detectors", "toy_centernet", "--unseen_detectors", "toy_ssdlite",
            "--weights", f"toy_centernet={ROOT / 'assets/toy/toy_centernet.pt'}",
            "--weights", f"toy_ssdlite={ROOT / 'assets/toy/toy_ssdlite.pt'}",
            "--per_class", "--no_progress", "--out", str(out), *extra]
    assert main(argv) == 0


def test_merged_shards_give_the_unsharded_results(toy, tmp_path, capsys):
    run(toy, tmp_path / "whole")
    run(toy, tmp_path / "s0", "--shard", "0/3")
    run(toy, tmp_path / "s1", "--shard", "1/3")
    run(toy, tmp_path / "s2", "--shard", "2/3")
    assert main(["--merge", str(tmp_path / "s0"), str(tmp_path / "s1"), str(tmp_path / "s2"),
                 "--out", str(tmp_path / "merged")]) == 0
    for curve in ("none.json", "jpeg.json"):
        whole, merged = read_json(tmp_path / "whole" / curve), read_json(tmp_path / "merged" / curve)
        assert merged["qualities"] == whole["qualities"]
        assert set(merged["results"]) == set(whole["results"])
        assert any(k.startswith("map-coco:") for k in whole["results"])  # detection metrics are compared
        for key, values in whole["results"].items():
            if key in TIMINGS:
                continue
            for a, b in zip(values, merged["results"][key]):
                assert (a is None and b is None) or math.isclose(a, b, rel_tol=0, abs_tol=1e-9), (curve, key, a, b)
        assert merged["per_class"] == whole["per_class"]
        assert merged["settings"]["num_images"] == whole["settings"]["num_images"] == 7
    # The merged per-image records serve the bootstrap like the unsharded ones.
    from icm.ap_bootstrap import PointSamples

    a = PointSamples.load(tmp_path / "whole" / "points" / "jpeg-q30.matches.npz")
    b = PointSamples.load(tmp_path / "merged" / "points" / "jpeg-q30.matches.npz")
    assert a.image_ids.tolist() == b.image_ids.tolist()
    assert (a.matches["toy_ssdlite"].voc == b.matches["toy_ssdlite"].voc).all()


def test_a_merge_of_incomplete_or_foreign_folders_is_refused(toy, tmp_path, capsys):
    run(toy, tmp_path / "s0", "--shard", "0/2")
    run(toy, tmp_path / "whole")
    with pytest.raises(SystemExit):
        main(["--merge", str(tmp_path / "s0"), "--out", str(tmp_path / "m")])  # shard 1 of 2 missing
    assert "the folders hold shards [(0, 2)], not 0..1 of 2 once each" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--merge", str(tmp_path / "whole"), "--out", str(tmp_path / "m")])
    assert "not a finished shard point" in capsys.readouterr().err
    assert not (tmp_path / "m" / "jpeg.json").exists()
