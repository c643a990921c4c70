"""Darknet's YOLOv3 family: .cfg parsing, strict .weights loading, decoding and the loss,
on a small synthetic network; the real YOLOv3-tiny when scripts/fetch_real_assets.py ran."""

from pathlib import Path

import numpy as np
import pytest
import torch

from icm.detectors import build_detector
from icm.detectors.darknet import (
    DarknetNet,
    DarknetYOLO,
    build_darknet,
    expected_weights_bytes,
    load_darknet_weights,
    parse_cfg,
)

ROOT = Path(__file__).resolve().parent.parent
CFG = """[net]
# a comment
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[shortcut]
from=-2
activation=linear

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 3,4,5
anchors = 4,5,  8,9,  12,14,  20,22,  30,28,  50,40
classes=2
num=6
ignore_thresh = .7

[route]
layers = -3

[upsample]
stride=2

[route]
layers = -1, 2

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 0,1,2
anchors = 4,5,  8,9,  12,14,  20,22,  30,28,  50,40
classes=2
num=6
ignore_thresh = .7
"""
# floats per convolution: bn 4 x filters (or bias) + kernel
FLOATS = (4 * 4 + 4 * 3 * 9) + (4 * 8 + 8 * 4 * 9) + (4 * 8 + 8 * 8 * 9) + (21 + 21 * 8) + (21 + 21 * 16)


def write_network(folder: Path, values: np.ndarray | None = None, extra: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.cfg").write_text(CFG)
    header = np.array([0, 2, 0], np.int32).tobytes() + np.array([12345], np.int64).tobytes()
    if values is None:
        values = np.abs(np.random.default_rng(0).normal(0, 0.1, FLOATS)).astype(np.float32)  # variances > 0
    (folder / "tiny.weights").write_bytes(header + values.astype(np.float32).tobytes() + b"\0" * extra)
    return folder / "tiny.weights"


def test_the_byte_count_is_counted_layer_by_layer_and_loading_is_strict(tmp_path):
    net = DarknetNet(parse_cfg(_cfg(tmp_path)))
    assert expected_weights_bytes(net) == 20 + 4 * FLOATS == 6412
    values = np.arange(FLOATS, dtype=np.float32)
    path = write_network(tmp_path / "w", values)
    assert path.stat().st_size == expected_weights_bytes(net)
    header = load_darknet_weights(net, path)
    assert header == {"major": 0, "minor": 2, "revision": 0, "seen": 12345}
    first = net.layers[0]  # batch-norm bias, scale, mean, variance, then the kernel
    assert first.bn.bias.tolist() == [0, 1, 2, 3] and first.bn.weight.tolist() == [4, 5, 6, 7]
    assert first.bn.running_var.tolist() == [12, 13, 14, 15] and first.conv.weight.flatten()[0] == 16
    last = net.layers[-2].conv  # no batch norm: its bias, then its kernel, the file's last floats
    assert last.bias[0] == FLOATS - 21 - 21 * 16 and last.weight.flatten()[-1] == FLOATS - 1
    for bad in (write_network(tmp_path / "long", values, extra=4), _truncated(tmp_path, path)):
        with pytest.raises(ValueError, match=r"bytes, but this .cfg's layers need exactly 6412"):
            load_darknet_weights(DarknetNet(parse_cfg(_cfg(tmp_path))), bad)


def _cfg(tmp_path: Path) -> Path:
    (tmp_path / "net.cfg").write_text(CFG)
    return tmp_path / "net.cfg"


def _truncated(tmp_path: Path, path: Path) -> Path:
    out = tmp_path / "short.weights"
    out.write_bytes(path.read_bytes()[:-8])
    return out


def test_cfg_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=64\nnonsense\n")
    with pytest.raises(ValueError, match=r"bad.cfg:3: expected a \[section\]"):
        parse_cfg(bad)
    bad.write_text("[convolutional]\nfilters=4\n")
    with pytest.raises(ValueError, match="starts with a \\[net\\] section"):
        parse_cfg(bad)
    bad.write_text(CFG.replace("[upsample]", "[reorg]"))
    with pytest.raises(ValueError, match=r"\[reorg\] is not supported"):
        DarknetNet(parse_cfg(bad))


def test_shapes_strides_and_decoding(tmp_path):
    net = DarknetNet(parse_cfg(_cfg(tmp_path)))
    outputs = net(torch.rand(2, 3, 64, 64))
    assert [(tuple(raw.shape), stride) for raw, _, stride in outputs] == [((2, 3, 16, 16, 7), 4),
                                                                          ((2, 3, 32, 32, 7), 2)]
    detector = DarknetYOLO("tiny", net, ["a", "b"], ["a", "b"]).freeze()
    raw = torch.zeros(1, 3, 16, 16, 7)
    boxes, scores = detector._decode([(raw, net.yolo_layers[0], 4)])
    # sigmoid(0) = 0.5: centre of each cell; exp(0) = 1: the anchor's own size (anchors 3..5)
    assert boxes.shape == (1, 3 * 256, 4) and scores.shape == (1, 3 * 256, 2)
    first_cell = boxes[0, 0]
    assert first_cell.tolist() == pytest.approx([2 - 10, 2 - 11, 2 + 10, 2 + 11])  # anchor 20 x 22
    assert scores.max().item() == pytest.approx(0.25)  # 0.5 * 0.5


def test_predict_maps_boxes_back_and_the_loss_is_differentiable_and_falls(tmp_path):
    detector = build_darknet("tiny", write_network(tmp_path / "w"), classes=["b", "a", "dog"])
    assert detector.native_classes == ["class_0", "class_1"] and detector.num_classes == 3
    detector = build_darknet("tiny", write_network(tmp_path / "w"))
    image = torch.rand(3, 48, 80)
    pred = detector.predict([image])[0]
    assert pred["boxes"].shape[1] == 4 and (pred["boxes"][:, 2] <= 80).all() and (pred["boxes"][:, 3] <= 48).all()
    target = [{"boxes": torch.tensor([[10.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([1])}]
    x = image[None].clone().requires_grad_(True)
    losses = []
    for _ in range(5):
        loss = detector.loss(x, target)
        (grad,) = torch.autograd.grad(loss, x)
        losses.append(loss.item())
        x = (x - 0.02 * grad.sign()).clamp(0, 1).detach().requires_grad_(True)
    assert grad.abs().sum() > 0 and losses[-1] < losses[0]
    empty = detector.loss(image[None], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert torch.isfinite(empty) and empty > 0


def test_a_weights_file_routes_yolov3_names_to_darknet(tmp_path):
    path = write_network(tmp_path / "w")
    (tmp_path / "w" / "coco.names").write_text("cat\ndog\n")
    detector = build_detector("yolov3-tiny", weights=str(path), classes=["dog", "horse"])
    assert isinstance(detector, DarknetYOLO) and detector.native_classes == ["cat", "dog"]
    assert detector.label_map.native_to_dataset.tolist() == [-1, 0]
    (tmp_path / "w" / "tiny.cfg").unlink()
    with pytest.raises(FileNotFoundError, match="tiny.cfg: the Darknet .cfg of tiny.weights is not beside it"):
        build_detector("yolov3-tiny", weights=str(path))


REAL = ROOT / "data" / "real"


@pytest.mark.skipif(not (REAL / "yolov3-tiny.weights").is_file(), reason="run scripts/fetch_real_assets.py")
def test_the_real_yolov3_tiny_finds_the_people_on_the_bus():
    from icm.io import read_image_tensor

    detector = build_detector("yolov3-tiny", weights=str(REAL / "yolov3-tiny.weights"))
    assert detector.num_classes == 80 and detector.classes[0] == "person"
    pred = detector.predict([read_image_tensor(REAL / "photos" / "bus.jpg")])[0]
    people = pred["labels"][pred["scores"] > 0.5] == 0
    assert int(people.sum()) >= 2
