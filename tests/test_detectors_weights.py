"""Detector checkpoints (save / load with weights_only=True) and the one-line error for
default weights that cannot be fetched (offline), without hanging."""

import time
import urllib.error
from pathlib import Path

import pytest
import torch

from icm.detectors import (
    WeightsUnavailableError,
    build_detector,
    load_detector,
    read_detector_checkpoint,
    save_detector_checkpoint,
)

CLASSES = ["circle", "square", "triangle"]


def _images():
    gen = torch.Generator().manual_seed(3)
    return [torch.rand(3, 64, 96, generator=gen), torch.rand(3, 80, 64, generator=gen)]


def _same_predictions(a, b, atol=0.0):
    assert len(a) == len(b)
    for pa, pb in zip(a, b):
        assert pa["boxes"].shape == pb["boxes"].shape
        assert torch.allclose(pa["boxes"], pb["boxes"], atol=atol)
        assert torch.allclose(pa["scores"], pb["scores"], atol=atol)
        assert torch.equal(pa["labels"], pb["labels"])


@pytest.mark.parametrize(
    "name, kwargs",
    [("toy_yolov8", {}), ("toy_faster_rcnn", {"box_score_thresh": 0.0})],
)
def test_checkpoint_round_trip(tmp_path, name, kwargs):
    detector = build_detector(name, classes=CLASSES, weights=None, **kwargs)
    path = tmp_path / f"{name}.pt"
    save_detector_checkpoint(path, detector, card={"trained_on": "nothing", "steps": 0}, half=False)

    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert raw["format"] == "icm-detector" and raw["name"] == name and raw["card"]["steps"] == 0
    assert raw["classes"] == CLASSES and raw["native_classes"] == CLASSES
    assert read_detector_checkpoint(path)["name"] == name

    loaded = load_detector(path)
    assert loaded.name == name and loaded.classes == CLASSES and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    for (k, v), (k2, v2) in zip(detector.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    _same_predictions(detector.predict(_images()), loaded.predict(_images()))
    # Through build_detector with weights=PATH too, and the stored build options survive.
    again = build_detector(name, weights=str(path))
    assert again.build_kwargs == detector.build_kwargs


def test_fp16_checkpoint_is_half_the_size_and_close(tmp_path):
    detector = build_detector("toy_yolov8", classes=CLASSES, weights=None)
    save_detector_checkpoint(tmp_path / "fp32.pt", detector, half=False)
    save_detector_checkpoint(tmp_path / "fp16.pt", detector)
    size32, size16 = (tmp_path / "fp32.pt").stat().st_size, (tmp_path / "fp16.pt").stat().st_size
    assert size16 < 0.55 * size32 and size16 < 5e6  # ships as a toy asset
    loaded = load_detector(tmp_path / "fp16.pt")
    for v, v2 in zip(detector.state_dict().values(), loaded.state_dict().values()):
        assert v2.dtype == v.dtype  # fp16 storage, fp32 parameters
        if v.is_floating_point():
            assert torch.allclose(v, v2, rtol=1e-3, atol=1e-4)


def test_checkpoint_retargets_classes_by_name(tmp_path):
    detector = build_detector("toy_yolov3", classes=CLASSES, weights=None)
    save_detector_checkpoint(tmp_path / "d.pt", detector, half=False)
    reordered = ["triangle", "circle", "extra"]  # "square" has no dataset class: dropped
    loaded = load_detector(tmp_path / "d.pt", classes=reordered)
    assert loaded.classes == reordered and loaded.native_classes == CLASSES
    original, mapped = detector.predict(_images()), loaded.predict(_images())
    to_new = torch.tensor([1, -1, 0])
    for p, q in zip(original, mapped):
        keep = to_new[p["labels"]] >= 0
        assert keep.any() and not keep.all()
        assert torch.equal(q["boxes"], p["boxes"][keep])
        assert torch.equal(q["labels"], to_new[p["labels"][keep]])


def test_checkpoint_errors(tmp_path):
    detector = build_detector("toy_yolov3", classes=CLASSES, weights=None)
    save_detector_checkpoint(tmp_path / "d.pt", detector)
    with pytest.raises(ValueError, match="checkpoint of detector 'toy_yolov3', not 'toy_yolov8'"):
        build_detector("toy_yolov8", weights=tmp_path / "d.pt")
    with pytest.raises(ValueError, match="4 classes asked|num_classes=4"):
        build_detector("toy_yolov3", weights=tmp_path / "d.pt", num_classes=4)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a detector checkpoint"):
        load_detector(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt: weights file not found"):
        load_detector(tmp_path / "missing.pt")
    # A checkpoint whose parameters do not fit: one clear error, not a state-dict dump.
    state = torch.load(tmp_path / "d.pt", weights_only=True)
    state["state_dict"].popitem()
    state.pop("state_sha256")  # (with it, the changed tensors are refused as corrupted first)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="parameters do not fit detector 'toy_yolov3'"):
        load_detector(tmp_path / "broken.pt")


def _offline_torch_hub(monkeypatch, tmp_path):
    import torchvision.models._api as tv_api

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty cache
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network)


def _offline_ultralytics(monkeypatch, tmp_path):
    import ultralytics.utils.downloads as downloads
    from ultralytics.utils import SETTINGS

    def no_network(url, file=None, *args, **kwargs):
        raise ConnectionError(f"Download failure for {url}. Environment may be offline.")

    if (Path(SETTINGS["weights_dir"]) / "yolov8n.pt").exists():
        pytest.skip("yolov8n.pt is in ultralytics' weights folder: nothing to download")
    monkeypatch.chdir(tmp_path)  # no yolov8n.pt lying in the working directory
    monkeypatch.setattr(downloads, "safe_download", no_network)


def test_offline_default_weights_torchvision(monkeypatch, tmp_path):
    _offline_torch_hub(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailableError) as err:
        build_detector("ssdlite")
    message = str(err.value)
    assert "\n" not in message
    assert "ssdlite320_mobilenet_v3_large_coco" in message and "--weights ssdlite=PATH" in message
    assert "https://download.pytorch.org/models/" in message
    assert isinstance(err.value, FileNotFoundError)  # the CLIs' user-error class


def test_offline_default_weights_ultralytics(monkeypatch, tmp_path):
    _offline_ultralytics(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailableError) as err:
        build_detector("yolov8")
    message = str(err.value)
    assert "\n" not in message
    assert "yolov8n.pt" in message and "--weights yolov8=PATH" in message


@pytest.mark.parametrize("name", ["toy_yolov8", "toy_faster_rcnn"])
def test_toy_detectors_have_no_default_weights(name):
    with pytest.raises(WeightsUnavailableError, match=f"--weights {name}=PATH"):
        build_detector(name, classes=CLASSES)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov8", "faster_rcnn"])
def test_default_weights_fail_fast_without_network(name, tmp_path, monkeypatch):
    """Unpatched: on a machine without network the library's own download fails in seconds."""
    import socket

    try:
        socket.getaddrinfo("download.pytorch.org", 443)
        pytest.skip("network available: the download would succeed")
    except OSError:
        pass
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=f"--weights {name}=PATH"):
        build_detector(name)
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("name, kwargs", [("yolov8", {"imgsz": None}), ("ssdlite", {"min_size": 64})])
def test_random_weights_download_nothing(name, kwargs, monkeypatch):
    """weights=None opens no connection and calls no downloader. (Importing ultralytics
    resolves two DNS names to decide whether it is online; that is a lookup, not a
    connection, and fails fast offline.)"""
    import socket

    import torchvision.models._api as tv_api
    import ultralytics.utils.downloads as downloads

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(downloads, "safe_download", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)
    detector = build_detector(name, weights=None, **kwargs)
    assert len(detector.predict([torch.rand(3, 64, 64)])) == 1
