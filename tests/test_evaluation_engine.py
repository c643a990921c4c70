"""The evaluation loop: real bpp against CompressAI's own eval code, the uncompressed upper
bound, detection on decoded images, result files and resume."""

import warnings

import numpy as np
import pytest
import torch
from helpers import SquareFinder, square_dataset, write_images
from PIL import Image

from icm.ap_bootstrap import PointSamples, map_from_matches
from icm.codec import bits_per_pixel, build_codec
from icm.data.records import DetectionDataset, DetectionSample
from icm.evaluation.engine import (
    CodecSpec,
    evaluate_codec,
    group_means,
    parse_codec_spec,
    point_path,
    run_evaluation,
)
from icm.evaluation.image_codecs import IdentityCodec, LearnedCodec, PillowCodec
from icm.evaluation.metrics import PSNR_CAP_DB
from icm.io import read_image_tensor, read_json


def folder_dataset(paths, sizes):
    samples = [DetectionSample(p.stem, p, w, h) for p, (h, w) in zip(paths, sizes)]
    return DetectionDataset("folder", [], samples)


def tiny_codec():
    model = build_codec("bmshj2018-hyperprior", 1, pretrained=False, N=16, M=24)
    model.update(force=True)
    return model.eval()


def test_real_bpp_psnr_msssim_equal_compressai_eval_model(tmp_path):
    from compressai.utils.eval_model.__main__ import inference

    threads = torch.get_num_threads()  # importing eval_model sets 1 thread
    sizes = [(176, 200), (170, 161)]  # not multiples of 64: padding and cropping matter
    paths = write_images(tmp_path, sizes)
    model = tiny_codec()
    torch.set_num_threads(threads)
    ours = evaluate_codec(LearnedCodec(model, "tiny", 1), folder_dataset(paths, sizes), progress=False)["results"]
    theirs = [inference(model, torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255)
              for p in paths]
    torch.set_num_threads(threads)
    # the same payload byte counts: compressai's strings for the same model and images
    assert ours["bpp"] == pytest.approx(np.mean([t["bpp"] for t in theirs]), rel=1e-12)
    assert ours["psnr-rgb"] == pytest.approx(np.mean([t["psnr-rgb"] for t in theirs]), abs=1e-4)
    assert ours["ms-ssim-rgb"] == pytest.approx(np.mean([t["ms-ssim-rgb"] for t in theirs]), abs=1e-5)
    assert 0 < ours["bpp"] < 24 and ours["encoding_time"] > 0 and ours["decoding_time"] > 0


def test_estimated_rate_is_close_to_the_real_one_and_labelled(tmp_path):
    sizes = [(64, 64)]
    paths = write_images(tmp_path, sizes)
    model = tiny_codec()
    real = evaluate_codec(LearnedCodec(model, "tiny", 1), folder_dataset(paths, sizes), progress=False)
    est_codec = LearnedCodec(model, "tiny", 1, estimate=True)
    est = evaluate_codec(est_codec, folder_dataset(paths, sizes), progress=False)
    assert est_codec.rate_type == "estimated"
    est_bytes, real_bytes = (r["results"]["bpp"] * 64 * 64 / 8 for r in (est, real))
    # the range coder adds a few bytes per stream (2 streams) over the ideal code length
    assert 0 < real_bytes - est_bytes < 16


def test_none_is_the_uncompressed_upper_bound(tmp_path):
    sizes = [(40, 56), (32, 32)]
    paths = write_images(tmp_path, sizes)
    r = evaluate_codec(IdentityCodec(), folder_dataset(paths, sizes), progress=False)
    assert r["results"]["bpp"] == 24.0
    assert r["results"]["psnr-rgb"] == PSNR_CAP_DB
    assert r["results"]["ms-ssim-rgb"] is None  # 40 and 32 px: too small, said so
    assert any("2 of 2 images too small" in n for n in r["notes"])


def test_jpeg_bpp_is_the_file_size(tmp_path):
    sizes = [(48, 80)]
    paths = write_images(tmp_path, sizes)
    codec = PillowCodec("jpeg", 50)
    payload, num_bytes = codec.encode(read_image_tensor(paths[0])[None])
    r = evaluate_codec(codec, folder_dataset(paths, sizes), progress=False)["results"]
    assert r["bpp"] == pytest.approx(len(payload) * 8 / (48 * 80))
    assert r["bpp"] == bits_per_pixel(len(payload), 48, 80)  # the one bpp formula, learned codecs' too
    assert 15 < r["psnr-rgb"] < 50


def test_detection_keys_per_protocol_and_groups(tmp_path):
    dataset = square_dataset(tmp_path)
    detectors = {"finder": SquareFinder(["square"]), "blind": SquareFinder(["square"], threshold=2.0)}
    r = evaluate_codec(IdentityCodec(), dataset, detectors, batch_size=3, per_class=True, progress=False,
                       groups={"seen": ["finder"], "unseen": ["blind"]})
    res = r["results"]
    for protocol in ("map-coco", "ap50-coco", "ap75-coco", "map-voc07", "map-voc12"):
        assert res[f"{protocol}:finder"] == pytest.approx(1.0)
        assert res[f"{protocol}:blind"] == 0.0
        assert res[f"{protocol}:seen-mean"] == pytest.approx(1.0)
        assert res[f"{protocol}:all-mean"] == pytest.approx(0.5)
    assert r["per_class"]["ap-voc12:finder"] == {"square": pytest.approx(1.0)}
    low = evaluate_codec(PillowCodec("jpeg", 5), dataset, {"finder": detectors["finder"]}, progress=False)
    assert low["results"]["bpp"] < 3 and low["results"]["map-coco:finder"] <= 1.0


def test_group_means_skip_missing_values():
    res = {"map-coco:a": 0.2, "map-coco:b": None, "map-coco:c": 0.6}
    out = group_means(res, {"seen": ["a", "b"], "unseen": ["c"]}, ["a", "b", "c"])
    assert out == {"map-coco:seen-mean": 0.2, "map-coco:unseen-mean": 0.6, "map-coco:all-mean": pytest.approx(0.4)}


def test_parse_codec_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("a", "b", "q3"):
        (tmp_path / "runs" / f"{name}.pth.tar").write_bytes(b"")
    assert parse_codec_spec("none", [1], [50]) == CodecSpec("none", "none")
    assert parse_codec_spec("jpeg=10,30", [1], [50]) == CodecSpec("pillow", "jpeg", [10, 30])
    assert parse_codec_spec("webp", [1], [50, 70]).qualities == [50, 70]
    assert parse_codec_spec("bmshj2018-hyperprior=2,3", [1], [50]) == CodecSpec("zoo", "bmshj2018-hyperprior", [2, 3])
    assert parse_codec_spec("bmshj2018", [1, 4], [50]).qualities == [1, 4]
    spec = parse_codec_spec("maa=runs/a.pth.tar,runs/b.pth.tar", [1], [50])
    assert spec.kind == "checkpoint" and spec.name == "maa" and len(spec.paths) == 2
    assert parse_codec_spec("runs/q3.pth.tar", [1], [50]).name == "q3"
    with pytest.raises(ValueError, match="not none, jpeg"):
        parse_codec_spec("mystery", [1], [50])
    with pytest.raises(ValueError, match="not an integer"):
        parse_codec_spec("jpeg=high", [1], [50])
    with pytest.raises(ValueError, match="runs/c.pth.tar: no such checkpoint file"):
        parse_codec_spec("maa=runs/a.pth.tar,runs/c.pth.tar", [1], [50])


def test_result_files_curve_and_resume(tmp_path):
    sizes = [(40, 48)]
    paths = write_images(tmp_path, sizes)
    dataset = folder_dataset(paths, sizes)
    specs = [CodecSpec("pillow", "jpeg", [30, 80]), CodecSpec("none", "none")]
    out = tmp_path / "out"
    curves = run_evaluation(specs, dataset, {}, out, {"dataset": "folder"}, progress=False)
    assert [c.name for c in curves] == ["jpeg.json", "none.json"]
    curve = read_json(out / "jpeg.json")
    assert curve["name"] == "jpeg" and curve["qualities"] == [30, 80]
    assert len(curve["results"]["bpp"]) == 2 and curve["results"]["bpp"][0] < curve["results"]["bpp"][1]
    point = out / "points" / "jpeg-q30.json"
    assert read_json(point)["results"]["bpp"] == curve["results"]["bpp"][:1]
    assert point_path(out, PillowCodec("jpeg", 30)) == point
    stamp = point.stat().st_mtime_ns
    run_evaluation(specs, dataset, {}, out, {"dataset": "folder"}, progress=False)
    assert point.stat().st_mtime_ns == stamp  # finished: skipped
    with pytest.warns(UserWarning, match="other settings"):
        run_evaluation(specs[:1], dataset, {}, out, {"dataset": "other"}, progress=False)
    assert point.stat().st_mtime_ns != stamp


def test_curve_keeps_only_points_of_this_runs_settings(tmp_path):
    sizes = [(40, 48), (32, 40)]
    paths = write_images(tmp_path, sizes)
    out = tmp_path / "out"
    run_evaluation([CodecSpec("pillow", "jpeg", [30, 80])], folder_dataset(paths, sizes), {}, out,
                   {"dataset": "folder", "limit": None}, progress=False)
    assert read_json(out / "jpeg.json")["qualities"] == [30, 80]
    # a rerun into the same --out on the first image only, at other qualities
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_evaluation([CodecSpec("pillow", "jpeg", [30, 50])], folder_dataset(paths[:1], sizes[:1]), {}, out,
                       {"dataset": "folder", "limit": 1}, progress=False)
    left_out = [str(w.message) for w in caught if "left out" in str(w.message)]
    assert len(left_out) == 1 and "left out 1 point(s) of 'jpeg'" in left_out[0]  # q80 of the old run
    curve = read_json(out / "jpeg.json")
    assert curve["qualities"] == [30, 50] and curve["settings"]["limit"] == 1
    one_image = evaluate_codec(PillowCodec("jpeg", 30), folder_dataset(paths[:1], sizes[:1]), progress=False)
    assert curve["results"]["bpp"][0] == one_image["results"]["bpp"]
    assert (out / "points" / "jpeg-q80.json").is_file()  # old points stay on disk, out of the curve
    # the same run again: nothing re-evaluated, no new warning about q30/q50
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_evaluation([CodecSpec("pillow", "jpeg", [30, 50])], folder_dataset(paths[:1], sizes[:1]), {}, out,
                       {"dataset": "folder", "limit": 1}, progress=False)
    assert not [w for w in caught if "other settings; evaluating again" in str(w.message)]
    assert read_json(out / "jpeg.json")["qualities"] == [30, 50]


def test_point_sidecar_keeps_per_image_values_and_matches(tmp_path):
    dataset = square_dataset(tmp_path, n=4)
    dataset.samples[3].boxes[0] += 30  # a box the finder misses: mAP below 1
    detectors = {"finder": SquareFinder(["square"]), "half": SquareFinder(["square"], threshold=0.5)}
    out, settings = tmp_path / "out", {"dataset": "squares"}
    run_evaluation([CodecSpec("pillow", "jpeg", [10, 60])], dataset, detectors, out, settings, progress=False)
    point = read_json(out / "points" / "jpeg-q10.json")
    assert point["sidecar"] == "jpeg-q10.matches.npz" and "sidecars" not in point
    sidecar = out / "points" / point["sidecar"]
    samples = PointSamples.load(sidecar)
    assert samples.image_ids.tolist() == ["0", "1", "2", "3"]
    assert samples.per_image["bpp"].mean() == pytest.approx(point["results"]["bpp"][0], rel=1e-12)
    assert samples.per_image["psnr-rgb"].mean() == pytest.approx(point["results"]["psnr-rgb"][0], rel=1e-12)
    assert np.isnan(samples.per_image["ms-ssim-rgb"]).all()  # 64 px: too small, as in the JSON
    assert sorted(samples.matches) == ["finder", "half"]
    for name in detectors:
        for key, protocol in (("map-voc07", "voc07"), ("map-voc12", "voc12"), ("map-coco", "coco"),
                              ("ap50-coco", "coco50"), ("ap75-coco", "coco75")):
            expected = point["results"][f"{key}:{name}"][0]
            assert map_from_matches(samples.matches[name], protocol) == pytest.approx(expected, abs=1e-9)
    assert 0.3 < point["results"]["map-voc12:finder"][0] < 0.9  # not a trivial case
    with np.load(sidecar, allow_pickle=False) as data:
        assert not [k for k in data.files if "box" in k]  # no raw boxes stored
    curve = read_json(out / "jpeg.json")
    assert curve["sidecars"] == ["points/jpeg-q10.matches.npz", "points/jpeg-q60.matches.npz"]
    assert "sidecar" not in curve
    stamp = sidecar.stat().st_mtime_ns
    run_evaluation([CodecSpec("pillow", "jpeg", [10, 60])], dataset, detectors, out, settings, progress=False)
    assert sidecar.stat().st_mtime_ns == stamp  # a finished point is skipped with its sidecar


def test_no_ground_truth_gives_no_map_in_either_protocol(tmp_path):
    labelled = square_dataset(tmp_path, n=2)
    unlabelled = DetectionDataset("squares", ["square"], [DetectionSample(s.id, s.image_path, s.width, s.height)
                                                         for s in labelled.samples])
    detectors = {"finder": SquareFinder(["square"]), "blind": SquareFinder(["square"], threshold=2.0)}
    res = evaluate_codec(IdentityCodec(), unlabelled, detectors, progress=False,
                         groups={"seen": ["finder"], "unseen": ["blind"]})["results"]
    for protocol in ("map-coco", "map-voc07", "map-voc12"):
        for key in ("finder", "blind", "seen-mean", "unseen-mean", "all-mean"):
            assert res[f"{protocol}:{key}"] is None  # not 0.0: a mean over runs must skip it


class MaskedSquareFinder(SquareFinder):
    """SquareFinder that also predicts the instance mask (the box filled)."""

    def predict_raw(self, images):
        out = super().predict_raw(images)
        for pred, img in zip(out, images):
            masks = torch.zeros(len(pred["boxes"]), 1, *img.shape[-2:])
            for k, (x1, y1, x2, y2) in enumerate(pred["boxes"].long().tolist()):
                masks[k, 0, y1:y2, x1:x2] = 1.0
            pred["masks"] = masks
        return out


def test_mask_ap_with_ground_truth_masks_and_note_without(tmp_path):
    from icm.evaluation.coco_eval import masks_to_rle

    dataset = square_dataset(tmp_path, n=2)
    annotations = []
    for i, s in enumerate(dataset.samples):
        x1, y1, x2, y2 = s.boxes[0].astype(int)
        m = np.zeros((1, s.height, s.width), np.uint8)
        m[0, y1:y2, x1:x2] = 1
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": float(m.sum()),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "segmentation": masks_to_rle(m)[0]})
    mask_gt = {"images": [{"id": i + 1, "width": 64, "height": 64} for i in range(2)],
               "categories": [{"id": 1, "name": "square"}], "annotations": annotations}
    det = {"masker": MaskedSquareFinder(["square"])}
    with_gt = evaluate_codec(IdentityCodec(), dataset, det, mask_ground_truth=mask_gt, progress=False)
    assert with_gt["results"]["mask-map-coco:masker"] == pytest.approx(1.0)
    # per-image mask records for the bootstrap, beside the box records
    from icm.ap_bootstrap import map_from_matches

    records = with_gt["samples"].matches
    assert sorted(records) == ["mask:masker", "masker"]
    assert records["mask:masker"].coco_gt.sum() == 2 and map_from_matches(records["mask:masker"], "coco") == 1.0
    without = evaluate_codec(IdentityCodec(), dataset, det, progress=False)
    assert "mask-map-coco:masker" not in without["results"] and list(without["samples"].matches) == ["masker"]
    assert any(n.startswith("mask-map-coco:masker: skipped") for n in without["notes"])


def test_zoo_codec_curve_is_named_and_kind_zoo(tmp_path, monkeypatch):
    import icm.evaluation.image_codecs as image_codecs
    from icm.evaluation.make_tables import default_anchor, load_curves

    built = []

    def fake_load_codec(path, backbone=None, quality=None, metric="mse", device="cpu", pretrained=True):
        assert path is None and pretrained  # the zoo path: pretrained weights of (backbone, quality)
        built.append((backbone, quality, metric))
        return tiny_codec(), {"arch": {"backbone": backbone, "quality": quality, "metric": metric}}

    monkeypatch.setattr(image_codecs, "load_codec", fake_load_codec)
    sizes = [(32, 48)]
    dataset = folder_dataset(write_images(tmp_path, sizes), sizes)
    specs = [parse_codec_spec("bmshj2018=1,2", [3], [50]), parse_codec_spec("jpeg=50", [3], [50])]
    curves = run_evaluation(specs, dataset, {}, tmp_path / "out", {}, progress=False)
    assert built == [("bmshj2018-hyperprior", 1, "mse"), ("bmshj2018-hyperprior", 2, "mse")]
    zoo = read_json(curves[0])
    assert curves[0].name == "bmshj2018-hyperprior-mse.json" and zoo["codec"]["kind"] == "zoo"
    assert zoo["qualities"] == [1, 2]
    assert default_anchor(load_curves(curves[::-1])) == "bmshj2018-hyperprior-mse"


def test_task_models_stay_out_of_the_detection_means():
    from icm.evaluation.engine import group_means

    results = {"map-voc07:a": 0.2, "map-voc07:b": 0.4, "map-voc07:m": 0.9, "mask-map-coco:m": 0.6}
    means = group_means(results, {"seen": ["a"], "unseen": ["b"], "task": ["m"]}, ["a", "b", "m"])
    assert means["map-voc07:all-mean"] == pytest.approx(0.3) and means["map-voc07:unseen-mean"] == 0.4
    assert means["mask-map-coco:task-mean"] == 0.6 and means["map-voc07:task-mean"] == 0.9
    # no detector of seen, unseen or all predicts masks: no mask key for them (not a null)
    assert not any(k.startswith("mask-") for k in means if not k.endswith("task-mean"))
