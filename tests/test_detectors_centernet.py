"""CenterNet: loss/gradients/predictions, targets and decoding, official checkpoint layouts."""

import math

import pytest
import torch
import torchvision

import icm.detectors.centernet  # noqa: F401 - registers the centernet names
from icm.data.classmaps import COCO_CLASSES, VOC_CLASSES
from icm.detectors.centernet import (
    CenterNet,
    decode_detections,
    encode_targets,
    focal_loss,
    gaussian_radius,
)
from icm.detectors.registry import available, build_detector, load_detector
from icm.detectors.weights import save_detector_checkpoint

TOY = ["circle", "square", "triangle"]
NAMES = ["centernet", "centernet_res18", "toy_centernet"]


def _targets(sizes):
    out = []
    for h, w in sizes:
        out.append({
            "boxes": torch.tensor([[4.0, 6.0, w / 2, h / 2], [w / 3, h / 4, w - 2.0, h - 1.0]]),
            "labels": torch.tensor([0, 2]),
        })
    return out


def test_registered_names():
    assert set(NAMES) <= set(available())


@pytest.mark.parametrize("name", NAMES)
def test_loss_finite_with_input_gradient(name):
    detector = build_detector(name, classes=TOY, num_classes=3, weights=None)
    assert not any(p.requires_grad for p in detector.parameters())
    assert not detector.training
    sizes = [(64, 96), (80, 64)]  # different sizes, neither a multiple of 32
    images = [torch.rand(3, h, w, requires_grad=True) for h, w in sizes]
    loss = detector.loss(images, _targets(sizes))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    for img in images:
        assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    # Frozen: BatchNorm running statistics did not move.
    assert not detector.training


@pytest.mark.parametrize("name", NAMES)
def test_predict_boxes_inside_image(name):
    detector = build_detector(name, classes=TOY, num_classes=3, weights=None)
    images = torch.rand(2, 3, 72, 100)
    preds = detector.predict(images)
    assert len(preds) == 2
    for p in preds:
        n = len(p["boxes"])
        assert n == 100 and p["scores"].shape == (n,) and p["labels"].shape == (n,)
        assert (p["boxes"][:, 0::2] >= 0).all() and (p["boxes"][:, 0::2] <= 100).all()
        assert (p["boxes"][:, 1::2] >= 0).all() and (p["boxes"][:, 1::2] <= 72).all()
        assert (p["boxes"][:, 2:] >= p["boxes"][:, :2]).all()
        assert ((p["scores"] >= 0) & (p["scores"] <= 1)).all()
        assert ((p["labels"] >= 0) & (p["labels"] < len(TOY))).all()
        assert (p["scores"][:-1] >= p["scores"][1:]).all()  # top-k order


def test_set_trainable_trains_batchnorm_and_parameters():
    detector = build_detector("toy_centernet", classes=TOY, weights=None)
    bn = detector.model.bn1
    before = bn.running_mean.clone()
    detector.set_trainable(True)
    assert detector.training and all(p.requires_grad for p in detector.parameters())
    sizes = [(64, 64), (64, 64)]
    loss = detector.loss([torch.rand(3, 64, 64) for _ in sizes], _targets(sizes))
    loss.backward()
    assert not torch.equal(bn.running_mean, before)  # batch statistics in train mode
    assert detector.model.hm[2].bias.grad is not None
    detector.freeze()
    assert not detector.training and not any(p.requires_grad for p in detector.parameters())


def test_gaussian_radius_hand_computed():
    # h = w = 10, overlap 0.7, the three official roots (b + sqrt(b^2 - 4ac)) / 2:
    r1 = (20 + math.sqrt(20**2 - 4 * 1 * (100 * 0.3 / 1.7))) / 2
    r2 = (40 + math.sqrt(40**2 - 4 * 4 * 30)) / 2
    r3 = (-28 + math.sqrt(28**2 + 4 * 2.8 * 30)) / 2  # b3 = -2 * 0.7 * 20
    assert gaussian_radius(10, 10) == pytest.approx(min(r1, r2, r3))
    assert gaussian_radius(10, 10) == pytest.approx(2.7332, abs=1e-4)


def test_focal_loss_hand_computed():
    pred = torch.tensor([[[[0.8, 0.3], [0.1, 0.5]]]])
    gt = torch.tensor([[[[1.0, 0.5], [0.0, 0.25]]]])
    pos = math.log(0.8) * 0.2**2
    neg = (
        math.log(0.7) * 0.3**2 * 0.5**4
        + math.log(0.9) * 0.1**2 * 1.0**4
        + math.log(0.5) * 0.5**2 * 0.75**4
    )
    assert focal_loss(pred, gt).item() == pytest.approx(-(pos + neg) / 1, rel=1e-5)
    # No positives: the negative term alone, not normalised.
    assert focal_loss(pred, gt * 0.5).item() == pytest.approx(
        -(math.log(0.2) * 0.64 * 0.5**4 + math.log(0.7) * 0.09 * 0.75**4
          + math.log(0.9) * 0.01 + math.log(0.5) * 0.25 * 0.875**4),
        rel=1e-5,
    )


def test_encode_decode_round_trip():
    boxes = torch.tensor([[10.0, 12.0, 50.5, 40.0], [60.2, 5.0, 90.0, 70.7], [3.0, 50.0, 20.0, 62.0]])
    labels = torch.tensor([1, 0, 1])
    out_h, out_w = 24, 28  # a 96 x 112 input at stride 4
    t = encode_targets(boxes, labels, 2, out_h, out_w)
    hm = t["heatmap"]
    assert hm.shape == (2, out_h, out_w) and hm.max() == 1 and (hm >= 0).all()
    assert int(hm.eq(1).sum()) == 3  # one exact peak per object
    # Dense size/offset maps from the sparse targets, then the detector's own decoding.
    wh = torch.zeros(1, 2, out_h * out_w)
    reg = torch.zeros(1, 2, out_h * out_w)
    wh[0, :, t["index"]] = t["size"].T
    reg[0, :, t["index"]] = t["offset"].T
    dec_boxes, scores, dec_labels = decode_detections(
        hm[None], wh.view(1, 2, out_h, out_w), reg.view(1, 2, out_h, out_w), k=3
    )
    assert torch.allclose(scores[0], torch.ones(3))
    order = [int(torch.cdist(b[None], dec_boxes[0] * 4).argmin()) for b in boxes]
    assert sorted(order) == [0, 1, 2]
    assert torch.allclose(dec_boxes[0][order] * 4, boxes, atol=1.0)
    assert torch.equal(dec_labels[0][order], labels)


def test_encode_gaussian_peak_and_radius():
    t = encode_targets(torch.tensor([[0.0, 0.0, 40.0, 40.0]]), torch.tensor([0]), 1, 16, 16)
    hm = t["heatmap"][0]
    radius = int(gaussian_radius(10, 10))  # 10 x 10 output pixels -> radius 2
    assert hm[5, 5] == 1  # centre (5, 5)
    sigma = (2 * radius + 1) / 6
    assert hm[5, 6].item() == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-5)
    assert hm[5, 5 + radius] > 0 and hm[5, 5 + radius + 1] == 0
    assert t["size"].tolist() == [[10.0, 10.0]] and t["offset"].tolist() == [[0.0, 0.0]]
    assert t["index"].tolist() == [5 * 16 + 5]


# ----------------------------------------------------------------------------- official layouts


def _backbone_shapes():
    """torchvision's resnet18 keys and shapes (the official backbone layout), without fc."""
    sd = torchvision.models.resnet18(weights=None).state_dict()
    return {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("fc.")}


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _heads(c_in, num_classes=80):
    shapes = {}
    for head, out in (("hm", num_classes), ("wh", 2), ("reg", 2)):
        shapes.update({f"{head}.0.weight": (64, c_in, 3, 3), f"{head}.0.bias": (64,),
                       f"{head}.2.weight": (out, 64, 1, 1), f"{head}.2.bias": (out,)})
    return shapes


def official_resdcn18_shapes():
    """Key -> shape of ctdet_coco_resdcn18.pth, written from the official layout."""
    shapes = _backbone_shapes()
    c_in = 512
    for stage, c in enumerate((256, 128, 64)):
        i = 6 * stage
        shapes.update({
            f"deconv_layers.{i}.weight": (c, c_in, 3, 3),
            f"deconv_layers.{i}.bias": (c,),
            f"deconv_layers.{i}.conv_offset_mask.weight": (27, c_in, 3, 3),
            f"deconv_layers.{i}.conv_offset_mask.bias": (27,),
            f"deconv_layers.{i + 3}.weight": (c, c, 4, 4),
        })
        shapes.update(_bn(f"deconv_layers.{i + 1}", c))
        shapes.update(_bn(f"deconv_layers.{i + 4}", c))
        c_in = c
    shapes.update(_heads(64))
    return shapes


def official_res18_shapes():
    """Key -> shape of the official ctdet res_18 checkpoint."""
    shapes = _backbone_shapes()
    c_in = 512
    for stage in range(3):
        shapes[f"deconv_layers.{3 * stage}.weight"] = (c_in, 256, 4, 4)
        shapes.update(_bn(f"deconv_layers.{3 * stage + 1}", 256))
        c_in = 256
    shapes.update(_heads(256))
    return shapes


def _write_official(path, shapes, prefix="module."):
    g = torch.Generator().manual_seed(1)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[prefix + k] = torch.tensor(7)
        else:
            state[prefix + k] = torch.rand(shape, generator=g) + 0.5
    torch.save({"epoch": 140, "state_dict": state}, path)
    return state


def test_official_key_spot_checks():
    shapes = official_resdcn18_shapes()
    assert shapes["deconv_layers.0.conv_offset_mask.weight"] == (27, 512, 3, 3)
    assert shapes["deconv_layers.9.weight"] == (128, 128, 4, 4)
    assert shapes["hm.2.bias"] == (80,)
    assert official_res18_shapes()["deconv_layers.6.weight"] == (256, 256, 4, 4)


@pytest.mark.parametrize(
    "name, shapes, prefix",
    [("centernet", official_resdcn18_shapes, "module."), ("centernet", official_resdcn18_shapes, ""),
     ("centernet_res18", official_res18_shapes, "module.")],
)
def test_official_checkpoint_loads_strictly(tmp_path, name, shapes, prefix):
    path = tmp_path / "ctdet.pth"
    state = _write_official(path, shapes(), prefix)
    detector = build_detector(name, classes=VOC_CLASSES, weights=path)
    loaded = detector.model.state_dict()
    assert set(loaded) == {k[len(prefix):] for k in state}
    for k, v in state.items():
        assert torch.equal(loaded[k[len(prefix):]], v)
    assert detector.native_classes == COCO_CLASSES and detector.classes == VOC_CLASSES
    assert detector.name == name


def test_official_checkpoint_with_missing_key_fails(tmp_path):
    shapes = official_resdcn18_shapes()
    del shapes["deconv_layers.0.conv_offset_mask.bias"]
    path = tmp_path / "broken.pth"
    _write_official(path, shapes)
    with pytest.raises(ValueError, match="broken.pth"):
        build_detector("centernet", weights=path)


def test_default_weights_offline_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        build_detector("centernet")
    message = str(err.value)
    assert "ctdet_coco_resdcn18.pth" in message and "--weights centernet=PATH" in message
    assert "\n" not in message


def test_coco_native_detector_maps_voc_labels():
    detector = CenterNet(VOC_CLASSES, native_classes=COCO_CLASSES, arch="small").freeze()
    person_voc, person_coco = VOC_CLASSES.index("person"), COCO_CLASSES.index("person")
    assert detector.label_map.dataset_to_native[person_voc] == person_coco
    assert detector.label_map.native_to_dataset[COCO_CLASSES.index("airplane")] == VOC_CLASSES.index("aeroplane")
    assert detector.label_map.native_to_dataset[COCO_CLASSES.index("giraffe")] == -1
    with torch.no_grad():  # make giraffe the strongest class everywhere: it must be dropped
        detector.model.hm[2].bias[COCO_CLASSES.index("giraffe")] = 10.0
    preds = detector.predict([torch.rand(3, 64, 64)])[0]
    assert len(preds["labels"]) == 100 and ((preds["labels"] >= 0) & (preds["labels"] < 20)).all()
    images = [torch.rand(3, 64, 64, requires_grad=True)]
    loss = detector.loss(images, [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 50.0]]),
                                   "labels": torch.tensor([person_voc])}])
    loss.backward()
    assert torch.isfinite(loss) and images[0].grad.abs().sum() > 0


def test_official_checkpoint_with_new_head_for_finetuning(tmp_path):
    path = tmp_path / "ctdet_coco_resdcn18.pth"
    state = _write_official(path, official_resdcn18_shapes())
    detector = build_detector("centernet", classes=TOY, num_classes=3, weights=path)
    loaded = detector.model.state_dict()
    assert loaded["hm.2.weight"].shape == (3, 64, 1, 1)
    assert torch.equal(loaded["hm.0.weight"], state["module.hm.0.weight"])
    assert torch.equal(loaded["deconv_layers.0.conv_offset_mask.weight"],
                       state["module.deconv_layers.0.conv_offset_mask.weight"])


def test_small_toy_size_and_checkpoint_round_trip(tmp_path):
    detector = build_detector("toy_centernet", classes=TOY, weights=None)
    num_params = sum(p.numel() for p in detector.parameters())
    assert 0.5e6 < num_params < 2.5e6  # under 5 MB in fp16
    with pytest.raises(ValueError, match="class"):
        build_detector("toy_centernet", weights=None)  # no default class set
    with pytest.raises(FileNotFoundError, match="--weights toy_centernet=PATH"):
        build_detector("toy_centernet", classes=TOY)  # no default weights
    path = tmp_path / "small.pt"
    save_detector_checkpoint(path, detector, {"steps": 3})
    assert path.stat().st_size < 5e6
    again = load_detector(path)
    assert again.name == "toy_centernet" and again.classes == TOY and not again.training
    batch, _ = detector.preprocess([torch.rand(3, 64, 80)])
    with torch.no_grad():
        a, b = detector.model(batch), again.model(batch)
    for head in ("hm", "wh", "reg"):
        assert torch.allclose(a[head], b[head], atol=1e-2)
    # fp16 storage: the reloaded weights are the rounded originals.
    w = detector.model.hm[0].weight
    assert torch.equal(again.model.hm[0].weight, w.half().float())


def test_small_skips_add_backbone_features_after_each_upsampling():
    from icm.detectors.centernet import CenterNetNet

    net = CenterNetNet(len(TOY), neck="conv", widths=(16, 32, 64, 128), neck_channels=(64, 64, 64), skips=True).eval()
    assert [tuple(s[0].weight.shape) for s in net.skips] == [(64, 64, 1, 1), (64, 32, 1, 1), (64, 16, 1, 1)]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        with_skips = net(x)["hm"]
        for skip in net.skips:  # a skip whose BN outputs 0 adds nothing
            skip[1].weight.zero_()
            skip[1].bias.zero_()
        silent = net(x)["hm"]
        stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        plain = net.hm(net.deconv_layers(net.layer4(net.layer3(net.layer2(net.layer1(stem))))))
    assert with_skips.shape == (2, len(TOY), 16, 24)
    assert torch.allclose(silent, plain, atol=1e-6) and not torch.allclose(with_skips, plain, atol=1e-4)


def _reference_heatmap(boxes, labels, num_classes, out_h, out_w):
    """The official drawing, one box at a time: a (2r+1)^2 gaussian window maxed into the map."""
    hm = torch.zeros(num_classes, out_h, out_w)
    for (x1, y1, x2, y2), label in zip((boxes / 4).tolist(), labels.tolist()):
        x1, x2 = min(max(x1, 0), out_w), min(max(x2, 0), out_w)
        y1, y2 = min(max(y1, 0), out_h), min(max(y2, 0), out_h)
        if x2 <= x1 or y2 <= y1 or label < 0:
            continue
        cx, cy = min(int((x1 + x2) / 2), out_w - 1), min(int((y1 + y2) / 2), out_h - 1)
        r = max(0, int(gaussian_radius(math.ceil(y2 - y1), math.ceil(x2 - x1))))
        sigma = (2 * r + 1) / 6
        for y in range(max(cy - r, 0), min(cy + r + 1, out_h)):
            for x in range(max(cx - r, 0), min(cx + r + 1, out_w)):
                g = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma * sigma))
                hm[label, y, x] = max(hm[label, y, x].item(), g if g >= torch.finfo(torch.float32).eps else 0.0)
    return hm


def test_encode_targets_matches_the_per_box_drawing_and_weights_out_what_adds_nothing():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(12, 2, generator=gen) * 100 - 10
    wh = torch.rand(12, 2, generator=gen) * 60
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[3] = torch.tensor([20.0, 20.0, 20.0, 40.0])  # empty
    boxes[4] = boxes[5] + 2.0  # overlaps box 5, same class below
    labels = torch.tensor([0, 1, 2, 1, 2, 2, 0, -1, 1, 0, 2, 1])
    t = encode_targets(boxes, labels, 3, 24, 28)
    reference = _reference_heatmap(boxes, labels, 3, 24, 28)
    assert torch.allclose(t["heatmap"], reference, atol=1e-6)
    assert t["weight"].tolist() == [0.0 if i in (3, 7) else 1.0 for i in range(12)]
    assert t["index"].shape == (12,) and t["size"].shape == t["offset"].shape == (12, 2)
    assert (t["offset"][t["weight"] > 0] >= 0).all() and (t["offset"][t["weight"] > 0] < 1).all()


def test_loss_ignores_boxes_that_add_nothing():
    detector = CenterNet(["a", "b"], arch="small")
    image = torch.rand(1, 3, 64, 64)
    box = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 36.0]]), "labels": torch.tensor([1])}
    padded = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 36.0], [5.0, 5.0, 5.0, 30.0], [1.0, 1.0, 9.0, 9.0]]),
              "labels": torch.tensor([1, 0, 7])}
    assert detector.loss(image, [box]).item() == pytest.approx(detector.loss(image, [padded]).item(), rel=1e-6)


def test_pascal_models_have_voc_heads_and_run_at_their_fixed_input(tmp_path):
    from icm.data.classmaps import VOC_CLASSES
    from icm.detectors import build_detector

    detector = build_detector("centernet_pascal384", weights=None)
    assert detector.native_classes == VOC_CLASSES and detector.input_size == 384
    assert detector.canvas(375, 500) == detector.canvas(500, 333) == (384, 384)
    image = torch.rand(3, 150, 200)
    batch, metas = detector.preprocess([image])
    scale, left, top = metas[0]
    assert batch.shape == (1, 3, 384, 384) and scale == pytest.approx(384 / 200) and (left, top) == (0, 48)
    assert batch[0, :, :48].std(dim=(1, 2)).max() < 1e-6  # black border above (one value per channel)
    # strict loading: a file of the official Pascal layout loads, the COCO head does not
    path = tmp_path / "ctdet_pascal_resdcn18_384.pth"
    torch.save({"epoch": 70, "state_dict": {f"module.{k}": v for k, v in detector.model.state_dict().items()}}, path)
    again = build_detector("centernet_pascal384", weights=str(path))
    assert torch.equal(again.model.hm[2].bias, detector.model.hm[2].bias)
    other = build_detector("centernet_res18", weights=None)  # another architecture's file is refused
    other_path = tmp_path / "res18.pth"
    torch.save({"state_dict": other.model.state_dict()}, other_path)
    with pytest.raises(ValueError, match="does not match the CenterNet resdcn_18 layout"):
        build_detector("centernet_pascal384", weights=str(other_path))
    # predictions come back in the input image's pixels; the loss sees the targets placed alike
    pred = detector.predict([image])[0]
    assert (pred["boxes"][:, 2] <= 200).all() and (pred["boxes"][:, 3] <= 150).all()
    target = [{"boxes": torch.tensor([[20.0, 30.0, 120.0, 140.0]]), "labels": torch.tensor([14])}]
    x = image[None].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(detector.loss(x, target), x)
    assert grad.abs().sum() > 0


def test_images_without_boxes_encode_and_give_a_loss():
    t = encode_targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3, 8, 8)
    assert t["heatmap"].shape == (3, 8, 8) and t["heatmap"].sum() == 0 and t["index"].shape == (0,)
    detector = CenterNet(["a", "b"], arch="small")
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    loss = detector.loss(torch.rand(2, 3, 64, 64), [empty, empty])
    assert torch.isfinite(loss) and loss > 0
