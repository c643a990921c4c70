"""evaluate.py end to end through main([...]): tiny images, codecs none and jpeg, a tiny
detector, result files, resume, and one-line errors."""

import pytest
import yaml
from helpers import SquareFinder, write_images

from icm.data.toy import make_toy_dataset
from icm.detectors import available, register
from icm.evaluation.evaluate import main
from icm.io import read_json

if "eval_test_square_finder" not in available():
    register("eval_test_square_finder")(lambda classes=None, weights="default", device="cpu", **kw: SquareFinder(classes))

PROBE_WEIGHTS = []  # the weights argument of each eval_test_weights_probe built


def weights_probe(classes=None, weights="default", device="cpu", **kw):
    PROBE_WEIGHTS.append(weights)
    return SquareFinder(classes)


if "eval_test_weights_probe" not in available():
    register("eval_test_weights_probe")(weights_probe)


def test_plain_folder_rate_and_fidelity_only(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    write_images(tmp_path / "imgs", [(40, 56), (64, 48)])
    out = tmp_path / "out"
    argv = ["--dataset", str(tmp_path / "imgs"), "--codecs", "none", "jpeg=20,80", "--out", str(out),
            "--detectors", "eval_test_square_finder", "--no_progress"]
    assert main(argv) == 0
    assert "no labels; detection skipped" in capsys.readouterr().err
    jpeg, none = read_json(out / "jpeg.json"), read_json(out / "none.json")
    assert jpeg["qualities"] == [20, 80] and jpeg["results"]["bpp"][0] < jpeg["results"]["bpp"][1] < 24
    assert none["results"]["bpp"] == [24.0] and none["results"]["psnr-rgb"] == [100.0]
    assert jpeg["results"]["ms-ssim-rgb"] == [None, None] and "too small" in jpeg["ms-ssim_note"]
    assert not any(k.startswith("map-") for k in jpeg["results"])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["codecs"] == ["none", "jpeg=20,80"] and (out / "environment.yaml").is_file()


def toy_config(tmp_path):
    root = make_toy_dataset(tmp_path / "toy", train=1, val=3, size=64, seed=0)
    cfg = tmp_path / "toy_data.yaml"
    cfg.write_text(yaml.safe_dump({"format": "toy", "root": str(root), "splits": {"val": {"split": "val"}}}))
    return cfg


def test_labelled_toy_set_with_detector_groups_and_resume(tmp_path, capsys):
    data_cfg = toy_config(tmp_path)
    run_cfg = tmp_path / "eval.yaml"
    run_cfg.write_text(yaml.safe_dump({"evaluation": {
        "dataset": str(data_cfg), "split": "val", "codecs": ["none", "jpeg=10,60"],
        "seen_detectors": ["eval_test_square_finder"], "unseen_detectors": [],
        "out": str(tmp_path / "out"), "batch_size": 2, "no_progress": True,
        "weights": {"eval_test_square_finder": "square.pt"},  # a mapping works in a config
    }}))
    assert main(["--config", str(run_cfg)]) == 0
    out = tmp_path / "out"
    jpeg = read_json(out / "jpeg.json")
    res = jpeg["results"]
    for key in ("map-coco", "ap50-coco", "ap75-coco", "map-voc07", "map-voc12"):
        values = res[f"{key}:eval_test_square_finder"]
        assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
        assert res[f"{key}:seen-mean"] == values
    assert jpeg["detector_groups"] == {"seen": ["eval_test_square_finder"], "unseen": [], "task": []}
    assert jpeg["num_images"] == 3 and jpeg["settings"]["weights"] == {"eval_test_square_finder": "square.pt"}
    stamp = (out / "points" / "jpeg-q10.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["--config", str(run_cfg), "--codecs", "jpeg=10"]) == 0  # resume: finished point skipped
    assert (out / "points" / "jpeg-q10.json").stat().st_mtime_ns == stamp
    assert read_json(out / "jpeg.json")["qualities"] == [10, 60]


def test_dataset_name_in_any_case_limit_and_random_init_weights(tmp_path):
    root = make_toy_dataset(tmp_path / "toy", train=1, val=3, size=64, seed=0)
    PROBE_WEIGHTS.clear()
    out = tmp_path / "out"
    argv = ["--dataset", "TOY", "--data_root", str(root), "--split", "val", "--limit", "2", "--codecs", "none",
            "--detectors", "eval_test_weights_probe", "--weights", "eval_test_weights_probe=Random",
            "--out", str(out), "--no_progress"]
    assert main(argv) == 0
    none = read_json(out / "none.json")
    assert none["num_images"] == 2 and none["settings"]["limit"] == 2
    assert none["settings"]["weights"]["eval_test_weights_probe"] is None  # random init (beside the toy config's)
    assert PROBE_WEIGHTS == [None]  # what build_detector was given
    assert 0.0 <= none["results"]["map-voc12:eval_test_weights_probe"][0] <= 1.0


def test_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--dataset", str(tmp_path / "missing"), "--codecs", "none", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--dataset", str(toy_config(tmp_path)), "--codecs", "gzip", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'gzip': not none, jpeg" in err
    # A text file named like a checkpoint fails before any codec is evaluated, in one line.
    fake = tmp_path / "fake.pth.tar"
    fake.write_text("not a checkpoint")
    with pytest.raises(SystemExit) as e:
        main(["--dataset", str(toy_config(tmp_path)), "--codecs", "none", f"x={fake}", "--detectors",
              "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.splitlines()[-1].startswith(f"error: {fake}: not a PyTorch checkpoint (")
    assert not (tmp_path / "o").exists()


def test_checkpoint_codec_with_estimate_and_compressai_plot_reads_results(tmp_path):
    from compressai.utils.plot.__main__ import parse_json_file

    from icm.codec import build_codec, save_codec_checkpoint

    (tmp_path / "imgs").mkdir()
    write_images(tmp_path / "imgs", [(64, 64), (48, 80)])
    arch = {"backbone": "bmshj2018-hyperprior", "metric": "mse"}
    ckpts = []
    for q in (1, 2):
        ckpts.append(tmp_path / f"tiny_q{q}.pth.tar")
        save_codec_checkpoint(ckpts[-1], build_codec("bmshj2018-hyperprior", q, pretrained=False, N=16, M=24),
                              {**arch, "quality": q})
    out = tmp_path / "out"
    spec = "tiny=" + ",".join(str(c) for c in ckpts)
    assert main(["--dataset", str(tmp_path / "imgs"), "--codecs", spec, "--out", str(out), "--no_progress"]) == 0
    assert main(["--dataset", str(tmp_path / "imgs"), "--codecs", spec, "--out", str(out), "--no_progress",
                 "--estimate"]) == 0
    real, est = read_json(out / "tiny.json"), read_json(out / "tiny-est.json")
    assert real["qualities"] == [1, 2] and real["description"].startswith("Inference (real bitstream)")
    assert est["name"] == "tiny (estimated bpp)" and "entropy estimation" in est["description"]
    assert real["results"]["psnr-rgb"] != est["results"]["psnr-rgb"] or real["results"]["bpp"] != est["results"]["bpp"]
    assert sorted(p.name for p in (out / "points").glob("tiny-q*")) == [
        "tiny-q1-tiny_q1.json", "tiny-q1-tiny_q1.matches.npz", "tiny-q2-tiny_q2.json", "tiny-q2-tiny_q2.matches.npz"]
    parsed = parse_json_file(out / "tiny.json", "psnr")  # CompressAI's plot tool reads the curve file
    assert parsed["name"] == "tiny" and parsed["xs"] == real["results"]["bpp"]
    assert parsed["ys"] == real["results"]["psnr-rgb"]


@pytest.mark.slow
def test_toy_detectors_seen_and_unseen_random_init(tmp_path):
    data_cfg = toy_config(tmp_path)
    out = tmp_path / "out"
    argv = ["--dataset", str(data_cfg), "--split", "val", "--codecs", "none", "jpeg=30", "--out", str(out),
            "--seen_detectors", "toy_yolov3,toy_faster_rcnn", "--unseen_detectors", "toy_centernet",
            "--weights", "toy_yolov3=none", "--weights", "toy_faster_rcnn=none", "--weights", "toy_centernet=none",
            "--no_progress"]
    assert main(argv) == 0
    res = read_json(out / "jpeg.json")["results"]
    for name in ("toy_yolov3", "toy_faster_rcnn", "toy_centernet", "seen-mean", "unseen-mean", "all-mean"):
        assert 0.0 <= res[f"map-voc07:{name}"][0] <= 1.0
    assert res["map-coco:unseen-mean"] == res["map-coco:toy_centernet"]


def test_bare_state_dict_needs_and_takes_backbone(tmp_path, capsys):
    import torch

    from icm.codec import build_codec

    (tmp_path / "imgs").mkdir()
    write_images(tmp_path / "imgs", [(32, 32)])
    bare = tmp_path / "bare.pth"
    model = build_codec("bmshj2018-hyperprior", 1, pretrained=False, N=16, M=24)
    model.update(force=True)
    torch.save(model.state_dict(), bare)
    argv = ["--dataset", str(tmp_path / "imgs"), "--codecs", str(bare), "--out", str(tmp_path / "o"), "--no_progress"]
    with pytest.raises(SystemExit):
        main(argv)
    assert "pass the backbone" in capsys.readouterr().err
    assert main(argv + ["--backbone", "bmshj2018-hyperprior"]) == 0
    assert read_json(tmp_path / "o" / "bare.json")["qualities"] == [None]


if "eval_test_pseudo_finder" not in available():
    register("eval_test_pseudo_finder")(lambda classes=None, weights="default", device="cpu", **kw:
                                        SquareFinder(classes or ["square"]))


def test_pseudo_ground_truth_is_the_detectors_own_view_of_the_originals(tmp_path, capsys):
    from helpers import square_dataset

    (tmp_path / "photos").mkdir()
    square_dataset(tmp_path / "photos", n=4)
    out = tmp_path / "out"
    argv = ["--config", "", "--dataset", str(tmp_path / "photos"), "--ground_truth", "pseudo", "--pseudo_score", "0.5",
            "--detectors", "eval_test_pseudo_finder", "--codecs", "none", "jpeg=1,95", "--out", str(out), "--no_progress"]
    assert main(argv) == 0
    none, jpeg = read_json(out / "none.json"), read_json(out / "jpeg.json")
    assert none["results"]["map-voc07:eval_test_pseudo_finder"] == [pytest.approx(1.0)]  # the originals: itself
    assert len(jpeg["results"]["map-voc07:eval_test_pseudo_finder"]) == 2 and jpeg["settings"] == none["settings"]
    assert none["settings"]["ground_truth"].startswith("pseudo: eval_test_pseudo_finder's own detections of "
                                                       "score >= 0.5") and "(4 boxes)" in none["settings"]["ground_truth"]
    with pytest.raises(SystemExit) as e:
        main([*argv[:-4], "--detectors", "eval_test_pseudo_finder", "eval_test_square_finder", "--out", str(out)])
    assert e.value.code == 2 and "exactly one detector" in capsys.readouterr().err
