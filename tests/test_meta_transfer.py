"""benchmarks/meta_transfer.py: the random controls, the gradient cosines and a tiny run."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from icm.data import load_dataset, make_toy_dataset
from icm.detectors.base import Detector
from icm.voc_eval import voc_map

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("meta_transfer", ROOT / "benchmarks" / "meta_transfer.py")
meta_transfer = importlib.util.module_from_spec(spec)
sys.modules["meta_transfer"] = meta_transfer
spec.loader.exec_module(meta_transfer)


class BrightBox(Detector):
    """Predicts one box per class where the image is brightest in that class's channel mix;
    its loss is differentiable in the pixels, and each seed is another model."""

    def __init__(self, name, classes, seed):
        super().__init__(list(classes))
        self.name = name
        gen = torch.Generator().manual_seed(seed)
        self.mix = nn.Parameter(torch.randn(len(classes), 3, generator=gen))

    def heat(self, x):
        return torch.einsum("kc,bchw->bkhw", self.mix, x)

    def predict_raw(self, images):
        out = []
        for img in images:
            heat = self.heat(img[None])[0]
            h, w = heat.shape[-2:]
            boxes, scores = [], []
            for k in range(heat.shape[0]):
                flat = int(heat[k].argmax())
                cy, cx = divmod(flat, w)
                boxes.append([max(cx - 8, 0), max(cy - 8, 0), min(cx + 8, w), min(cy + 8, h)])
                scores.append(torch.sigmoid(heat[k].max()).item())
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
                        "labels": torch.arange(heat.shape[0])})
        return out

    def loss_raw(self, images, targets):
        total = 0
        for img, t in zip(images, targets):
            heat = self.heat(img[None])[0]
            mask = torch.zeros_like(heat)
            for (x1, y1, x2, y2), k in zip(t["boxes"].round().long().tolist(), t["labels"].tolist()):
                mask[k, y1:y2, x1:x2] = 1.0
            total = total + nn.functional.binary_cross_entropy_with_logits(heat, mask)
        return total


def test_random_sign_control_matches_the_mean_level():
    gen = torch.Generator().manual_seed(0)
    clean = torch.full((2, 3, 64, 64), 128 / 255)
    level = torch.tensor([5.3, 2.0])
    noisy = meta_transfer.random_sign_control(clean, level, gen)
    delta = ((noisy - clean) * 255).round()
    assert torch.equal(noisy, (noisy * 255).round() / 255)
    assert meta_transfer.mean_abs_levels(noisy, clean).tolist() == pytest.approx([5.3, 2.0], abs=0.05)
    assert set(delta[0].abs().unique().tolist()) == {5.0, 6.0} and set(delta[1].abs().unique().tolist()) == {2.0}
    assert abs(delta.sign().mean().item()) < 0.02  # signs balanced
    # Neighbours are independent: rough, unlike the smooth control.
    smooth = meta_transfer.smooth_control(clean, level, 8, gen)
    s_delta = ((smooth - clean) * 255).round()
    assert s_delta.abs().max() <= 8
    assert meta_transfer.mean_abs_levels(smooth, clean).tolist() == pytest.approx([5.3, 2.0], abs=0.1)

    def roughness(d):
        return (d[..., 1:] - d[..., :-1]).abs().mean().item()

    assert roughness(s_delta) < roughness(delta) / 4


def test_gradient_cosines_of_identical_and_opposite_models():
    classes = ["a", "b"]
    a = BrightBox("a", classes, 0).freeze()
    b = BrightBox("b", classes, 0).freeze()
    c = BrightBox("c", classes, 1).freeze()
    images = [torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    targets = [{"boxes": torch.tensor([[2.0, 2.0, 12.0, 12.0]]), "labels": torch.tensor([1])}] * 2
    cos = meta_transfer.gradient_cosines({"a": a, "b": b, "c": c}, images, targets, smooth=5)
    assert cos["raw"]["a|b"] == pytest.approx(1.0, abs=1e-5) and cos["smoothed"]["a|b"] == pytest.approx(1.0, abs=1e-5)
    assert -1 <= cos["raw"]["a|c"] < 0.999
    assert meta_transfer.mean_cosine(cos["raw"], ["a"], ["b", "c"]) == pytest.approx(
        (cos["raw"]["a|b"] + cos["raw"]["a|c"]) / 2)


def test_a_tiny_run_reports_map_differences_with_intervals(tmp_path, monkeypatch, capsys):
    root = make_toy_dataset(tmp_path / "toy", train=2, val=12, size=48, seed=5)
    classes = load_dataset("toy", split="val", root=root).classes
    seeds = {"s1": 1, "s2": 2, "u1": 3}

    def build(name, classes=None, weights=None, device="cpu", **kw):
        return BrightBox(name, classes, seeds[name]).freeze()

    monkeypatch.setattr("icm.detectors.registry.build_detector", build)
    out = tmp_path / "transfer.json"
    result = meta_transfer.main([
        "--config", "", "--data_root", str(root), "--seen", "s1", "s2", "--unseen", "u1", "--limit", "10",
        "--batch_size", "4", "--meta_steps", "2", "--inner_steps", "1", "--epsilon", "16/255",
        "--bootstrap", "200", "--cosine_images", "3", "--no_progress", "--out", str(out)])
    assert out.is_file() and result["images"] == 10
    rows = result["detectors"]
    assert list(rows) == ["s1", "s2", "u1", "seen mean", "unseen mean"]
    # clean mAP equals the direct VOC07 mAP of the detector's predictions
    dataset = load_dataset("toy", split="val", root=root, limit=10)
    samples = [s for b in meta_transfer.equal_size_batches(dataset.samples, 4) for s in b]
    detector = build("u1", classes)
    preds = detector.predict([meta_transfer.read_image_tensor(s.image_path) for s in samples])
    gt = [{"boxes": s.boxes, "labels": s.labels, "difficult": s.difficult} for s in samples]
    assert rows["u1"]["map_clean"] == pytest.approx(voc_map(gt, preds, len(classes), use_07_metric=True).map)
    assert rows["seen mean"]["map_clean"] == pytest.approx((rows["s1"]["map_clean"] + rows["s2"]["map_clean"]) / 2)
    for row in rows.values():
        for a, b in meta_transfer.COMPARISONS:
            d = row[f"{a}-{b}"]
            assert d["estimate"] == pytest.approx(row[f"map_{a}"] - row[f"map_{b}"])
            assert d["low"] <= d["estimate"] <= d["high"] or math.isnan(d["low"])
    # the controls have the perturbation's mean |delta|
    levels = result["mean_abs_delta_levels"]
    assert levels["random"] == pytest.approx(levels["maa"], abs=0.1)
    assert levels["smooth"] == pytest.approx(levels["maa"], abs=0.1)
    assert 7.5 < levels["noise"] <= 8.0  # +-8 everywhere, less where [0, 255] clips it
    assert set(result["gradient_cosine_means"]["raw"]) == {"seen-unseen", "seen-seen", "unseen-unseen"}
    table = capsys.readouterr().out
    assert "| unseen mean | no |" in table and "Input-gradient cosine" in table
    assert "maa - random" in table and "maa - smooth" in table and "noise - clean" in table
    assert np.isfinite(result["gradient_cosine_means"]["smoothed"]["seen-unseen"])
    # The summary of result files: one row per file, with the unseen mean's intervals.
    meta_transfer.main(["--summarize", str(out)])
    summary = capsys.readouterr().out.splitlines()
    assert summary[0].startswith("| setting |") and summary[2].startswith("| transfer | ")
    unseen = rows["unseen mean"]["maa-random"]
    assert f"{100 * unseen['estimate']:+.1f} [{100 * unseen['low']:+.1f}, {100 * unseen['high']:+.1f}]" in summary[2]


def test_start_picks_other_images_for_a_replicate(tmp_path, monkeypatch, capsys):
    root = make_toy_dataset(tmp_path / "toy", train=2, val=6, size=48, seed=5)
    common = ["--config", "", "--data_root", str(root), "--seen", "s1", "--unseen", "u1", "--limit", "4",
              "--meta_steps", "1", "--inner_steps", "1", "--bootstrap", "10", "--cosine_images", "0", "--no_progress"]
    monkeypatch.setattr("icm.detectors.registry.build_detector",
                        lambda name, classes=None, weights=None, device="cpu", **kw: BrightBox(name, classes, 1).freeze())
    first = meta_transfer.main([*common, "--start", "0"])
    later = meta_transfer.main([*common, "--start", "3"])
    assert first["image_ids"] == [f"val_{i:05d}" for i in range(4)]
    assert later["image_ids"] == ["val_00003", "val_00004", "val_00005"]  # only three remain
    with pytest.raises(SystemExit):
        meta_transfer.main([*common, "--start", "6"])
    assert "--start 6: the split 'val' has 6 images" in capsys.readouterr().err


def tiny_codec_run(tmp_path, monkeypatch):
    """A six-image toy val split, BrightBox detectors s1 (seen) and u1 (unseen), and the
    meta_transfer flags of a fast run on it: (data root, flags)."""
    root = make_toy_dataset(tmp_path / "toy", train=2, val=6, size=48, seed=5)
    monkeypatch.setattr("icm.detectors.registry.build_detector", build_bright_box)
    common = ["--config", "", "--data_root", str(root), "--seen", "s1", "--unseen", "u1", "--limit", "6",
              "--batch_size", "3", "--meta_steps", "1", "--inner_steps", "1", "--epsilon", "16/255",
              "--bootstrap", "20", "--cosine_images", "0", "--no_progress"]
    return root, common


def build_bright_box(name, classes=None, weights=None, device="cpu", **kw):
    return BrightBox(name, classes, 3).freeze()


def map_on_decodes(root, model):
    """u1's VOC07 mAP on ``model``'s decodes of the tiny run's images (in meta_transfer's
    batch order), and the mean |decode - image|."""
    dataset = load_dataset("toy", split="val", root=root, limit=6)
    samples = [s for b in meta_transfer.equal_size_batches(dataset.samples, 3) for s in b]
    images = torch.stack([meta_transfer.read_image_tensor(s.image_path) for s in samples])
    decoded = meta_transfer.decode_8bit(model, images)
    gt = [{"boxes": s.boxes, "labels": s.labels, "difficult": s.difficult} for s in samples]
    preds = build_bright_box("u1", dataset.classes).predict(list(decoded))
    return voc_map(gt, preds, len(dataset.classes), use_07_metric=True).map, float((decoded - images).abs().mean())


def test_carried_adds_the_whole_perturbation_to_the_decode():
    clean = torch.tensor([10.0, 100.0, 250.0, 3.0]).view(1, 1, 2, 2) / 255
    variant = torch.tensor([18.0, 92.0, 255.0, 3.0]).view(1, 1, 2, 2) / 255
    decoded = torch.tensor([12.4, 101.0, 251.0, 0.0]).view(1, 1, 2, 2) / 255
    out = meta_transfer.carried(decoded, variant, clean) * 255
    # +8, -8, +5 (clipped at 255), 0 on the decode's 8-bit values
    assert out.flatten().tolist() == pytest.approx([20.0, 93.0, 255.0, 0.0])
    assert torch.equal(meta_transfer.carried(decoded, clean, clean) * 255, (decoded * 255).round())


def test_carried_by_scores_the_decoded_images(tmp_path, monkeypatch, capsys, codec_assets):
    _, model, ckpt, _ = codec_assets
    root, common = tiny_codec_run(tmp_path, monkeypatch)
    result = meta_transfer.main([*common, "--carried_by", str(ckpt)])
    assert result["carried_by"] == str(ckpt)
    table = capsys.readouterr().out
    assert "decoded by" in table and "Input-gradient cosine" not in table  # --cosine_images 0: no line
    # 'clean' is now the codec's decode of x: its mAP is the detector's on the decoded images.
    decoded_map, moved = map_on_decodes(root, model)
    assert moved > 0.01  # the (random, tiny) codec's decode, not the image
    assert result["detectors"]["u1"]["map_clean"] == pytest.approx(decoded_map)
    # sizes are measured on the decode, where [0, 255] clips them (this random codec decodes
    # near the ends of the range, so they shrink)
    levels = result["mean_abs_delta_levels"]
    assert 0 < levels["noise"] <= 8.0
    with pytest.raises(SystemExit):
        meta_transfer.main([*common, "--carried_by", str(tmp_path / "missing.pth.tar")])
    assert "--carried_by" in capsys.readouterr().err


def test_encoded_by_scores_each_variant_through_the_codec(tmp_path, monkeypatch, capsys):
    ckpt = ROOT / "assets" / "toy" / "codec_q6.pth.tar"  # a trained codec: it reacts to +-8 levels
    if not ckpt.is_file():
        pytest.skip("no shipped toy codec")
    from icm.codec import load_codec

    model, _ = load_codec(ckpt)
    root, common = tiny_codec_run(tmp_path, monkeypatch)
    result = meta_transfer.main([*common, "--encoded_by", str(ckpt)])
    assert result["encoded_by"] == str(ckpt) and result["carried_by"] is None
    assert "encoded and decoded by" in capsys.readouterr().out
    # 'clean' is the codec's decode of x, each variant the codec's decode of itself
    assert result["detectors"]["u1"]["map_clean"] == pytest.approx(map_on_decodes(root, model)[0])
    # the codec lets part of iid noise through, more of a smooth field of the same size
    shares = result["share_passed"]
    assert 0.0 < shares["noise"] < 0.9 and shares["noise"] < shares["smooth"] < 1.2, shares
    with pytest.raises(SystemExit):
        meta_transfer.main([*common, "--encoded_by", str(ckpt), "--carried_by", str(ckpt)])
    assert "give one of them" in capsys.readouterr().err
