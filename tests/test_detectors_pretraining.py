"""icm.detectors.pretraining and scripts/pretrain_backbone.py: the toy world's upstream pretraining."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from icm.data import TOY_CLASSES
from icm.data.toy import (
    CLASSIFICATION_LABELS,
    HUE_SECTORS,
    render_toy_classification,
    toy_classification_arrays,
)
from icm.detectors import build_detector
from icm.detectors.pretraining import Body, body_prefixes, load_body, pretrain_body, save_body

ROOT = Path(__file__).resolve().parent.parent
TOY = ["toy_yolov3", "toy_yolov8", "toy_faster_rcnn", "toy_fcos", "toy_ssdlite", "toy_centernet"]


def _toy(name):
    return build_detector(name, classes=TOY_CLASSES, num_classes=len(TOY_CLASSES), weights=None)


def test_classification_images_are_deterministic_and_labelled():
    images, labels = toy_classification_arrays(12, 48, seed=3)
    again, again_labels = toy_classification_arrays(6, 48, seed=3)
    assert images.shape == (12, 3, 48, 48) and images.dtype == np.uint8 and labels.shape == (12, 3)
    assert np.array_equal(images[:6], again) and np.array_equal(labels[:6], again_labels)  # prefixes agree
    assert not np.array_equal(toy_classification_arrays(6, 48, seed=4)[0], again)
    assert len(CLASSIFICATION_LABELS) == 3
    assert labels[:, 0].max() < len(TOY_CLASSES) and labels[:, 1].max() < HUE_SECTORS and labels[:, 2].max() < 3
    # The hue label names the shape's colour: the most common hue of the image's pixels
    # that differ most from the background lies in that sector (or a neighbour, with shading).
    import colorsys

    for i in range(40):
        pixels, (shape, hue, background) = render_toy_classification(np.random.default_rng([9, i]), 64)
        centre = pixels[24:40, 24:40].reshape(-1, 3).astype(float) / 255
        hues = [colorsys.rgb_to_hsv(*p)[0] for p in centre]
        sector = int(np.median(hues) * HUE_SECTORS + 0.5) % HUE_SECTORS
        if shape in (TOY_CLASSES.index("circle"), TOY_CLASSES.index("square")):  # centre is the shape
            assert min((sector - hue) % HUE_SECTORS, (hue - sector) % HUE_SECTORS) <= 1, (i, sector, hue)


@pytest.mark.parametrize("name", TOY)
def test_every_toy_body_extracts_features_and_its_keys_exist(name):
    detector = _toy(name)
    prefixes = body_prefixes(detector)
    keys = [k for k in detector.state_dict() if k.startswith(tuple(prefixes))]
    assert keys and len(keys) < len(detector.state_dict())  # the body, not the whole detector
    features = Body(detector)(torch.rand(2, 3, 64, 64))
    assert features.dim() == 4 and features.shape[0] == 2 and features.shape[-1] == 2  # stride 32


def test_unseen_fcos_shares_no_body_family_with_the_seen_faster_rcnn():
    def blocks(detector):  # the architecture blocks of the body (torchvision.models.<family> classes)
        return {f"{type(m).__module__}.{type(m).__name__}" for m in detector.model.backbone.body.modules()
                if type(m).__module__.startswith("torchvision.models.") and "detection" not in type(m).__module__
                and type(m).__name__ != "IntermediateLayerGetter"}

    fcos, frcnn = blocks(_toy("toy_fcos")), blocks(_toy("toy_faster_rcnn"))
    assert "torchvision.models.shufflenetv2.InvertedResidual" in fcos
    assert "torchvision.models.mobilenetv3.InvertedResidual" in frcnn
    assert not fcos & frcnn


def test_pretraining_learns_and_the_body_round_trips(tmp_path):
    torch.set_num_threads(1)
    images, labels = toy_classification_arrays(240, 32, seed=0)
    detector = _toy("toy_centernet")
    log = []
    summary = pretrain_body(detector, torch.from_numpy(images), torch.from_numpy(labels), steps=60,
                            batch_size=32, lr=3e-3, log=log.append, log_every=10)
    assert log[-1]["loss"] < 0.85 * log[0]["loss"]
    assert summary["held_out_images"] == 24 and len(summary["held_out_accuracy"]) == 3
    assert not detector.training and not any(p.requires_grad for p in detector.parameters())
    save_body(tmp_path / "body.pt", detector, {"note": "test"})
    fresh = _toy("toy_centernet")
    head_before = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("model.hm.")}
    card = load_body(tmp_path / "body.pt", fresh)
    assert card == {"note": "test"}
    for key, value in detector.state_dict().items():
        if key.startswith(tuple(body_prefixes(detector))):
            assert torch.equal(fresh.state_dict()[key], value), key
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in head_before.items())  # the head stays as built
    saved = torch.load(tmp_path / "body.pt", weights_only=True)
    assert saved["format"] == "icm-backbone" and saved["detector"] == "toy_centernet"
    with pytest.raises(ValueError, match="does not fit toy_yolov3's body"):
        load_body(tmp_path / "body.pt", _toy("toy_yolov3"))
    (tmp_path / "junk.pt").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="junk.pt: not a readable backbone file"):
        load_body(tmp_path / "junk.pt", fresh)


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretrain_script_writes_the_body_and_its_card(tmp_path, capsys):
    out = tmp_path / "bodies" / "darknet.pt"
    assert _load_script("pretrain_backbone").main(["--model", "toy_yolov3", "--out", str(out), "--images", "64",
                                                   "--size", "32", "--steps", "3", "--batch_size", "8"]) == 0
    card = torch.load(out, weights_only=True)["card"]
    assert card["model"] == "toy_yolov3" and card["steps"] == 3 and card["image_size"] == 32
    assert set(card["held_out_accuracy"]) == set(CLASSIFICATION_LABELS)
    assert out.with_suffix(".log.jsonl").is_file()
    with pytest.raises(SystemExit) as e:
        _load_script("pretrain_backbone").main(["--model", "toy_yolov3", "--out", str(tmp_path), "--steps", "1"])
    assert e.value.code == 2 and "is a folder" in capsys.readouterr().err
