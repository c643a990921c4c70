"""torchvision family: zoo weights give the library's own model, COCO ids translate to the
dataset's classes, the frozen loss is deterministic and keeps BatchNorm in eval, toy
architectures fit 128 px images."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from icm.data.classmaps import COCO_91_IDS, COCO_CLASSES, VOC_CLASSES, class_map
from icm.detectors import build_detector
from icm.detectors.torchvision_family import SPECS, _coco_classes

CLASSES = ["circle", "square", "triangle"]


def _image(h, w, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def _targets():
    return [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]), "labels": torch.tensor([0, 2])}]


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if not s.toy])
def test_zoo_classes_are_coco(name):
    names, ids = _coco_classes(SPECS[name])
    assert names == COCO_CLASSES and ids == COCO_91_IDS


def _zoo_state(name: str, tmp_path):
    """A state dict in the zoo layout (FrozenBatchNorm where the library freezes it),
    with random values, and the file it is saved in."""
    from torchvision.models import get_model

    spec = SPECS[name]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        library = get_model(spec.builder, weights=None, weights_backbone=None, num_classes=91)
        # The library builds these ResNet bodies with FrozenBatchNorm2d (v2: real BatchNorm2d).
        frozen = name in ("faster_rcnn", "mask_rcnn", "retinanet", "fcos")
        state = {}
        for key, value in library.state_dict().items():
            if key.startswith("backbone.body.") and key.endswith("num_batches_tracked") and frozen:
                continue  # the library builds its ResNet body with FrozenBatchNorm2d
            if value.is_floating_point():
                value = torch.rand(value.shape, generator=gen) * 0.1 + (0.5 if "running_var" in key else 0.0)
            state[key] = value
    torch.save(state, tmp_path / "zoo.pth")
    return state


@pytest.mark.parametrize(
    "name", ["faster_rcnn", pytest.param("faster_rcnn_v2", marks=pytest.mark.slow), pytest.param("retinanet", marks=pytest.mark.slow)]
)
def test_zoo_weights_give_the_library_model(name, tmp_path, monkeypatch):
    """Our build from a zoo file == torchvision's own builder with the same weights
    (FrozenBatchNorm layout and the legacy eps=0 of COCO_V1 included)."""
    import torchvision.models._api as tv_api
    from torchvision.models import get_model, get_model_weights

    state = _zoo_state(name, tmp_path)
    ours = build_detector(name, weights=tmp_path / "zoo.pth", min_size=128, max_size=128)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", lambda *a, **k: state)
    spec = SPECS[name]
    library = get_model(spec.builder, weights=get_model_weights(spec.builder).DEFAULT, min_size=128, max_size=128).eval()

    def norms(model):
        return [(type(m).__name__, m.eps) for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]

    assert norms(ours.model) == norms(library)
    img = _image(96, 128)
    with torch.no_grad():
        expected = library([img])[0]
        x = torch.rand(1, 3, 64, 64)
        features, library_features = ours.model.backbone(x), library.backbone(x)
    assert all(torch.equal(features[k], library_features[k]) for k in library_features)
    got = ours.model.eval()([img])[0]
    assert torch.equal(got["boxes"], expected["boxes"]) and torch.equal(got["labels"], expected["labels"])


def test_zoo_weights_from_the_hub_cache_load_weights_only_and_hash_checked(monkeypatch):
    """torch.hub's loader unpickles freely unless told otherwise; ours asks for both checks."""
    import torchvision.models._api as tv_api

    from icm.detectors.torchvision_family import _zoo_state_dict

    calls = []

    def fake_load(url, **kwargs):
        calls.append((url, kwargs))
        return {"w": torch.zeros(1)}

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", fake_load)
    assert list(_zoo_state_dict("faster_rcnn", SPECS["faster_rcnn"], "default")) == ["w"]
    (url, kwargs), = calls
    assert url.endswith(".pth") and kwargs["weights_only"] is True and kwargs["check_hash"] is True


def test_predictions_translate_coco_ids_to_voc(tmp_path):
    """COCO category ids -> VOC indices; detections of COCO classes absent from VOC dropped."""
    kwargs = {"min_size": 128, "score_thresh": 0.0, "detections_per_img": 200}
    coco = build_detector("ssdlite", weights=None, **kwargs)
    voc = build_detector("ssdlite", weights=None, classes=VOC_CLASSES, **kwargs)
    voc.load_state_dict(coco.state_dict())
    images = [_image(96, 128, seed=1)]
    # The raw model output in COCO ids, for reference.
    with torch.no_grad():
        raw = coco.model.eval()(images)[0]
    coco_index = torch.tensor([COCO_91_IDS.index(int(i)) for i in raw["labels"]])
    to_voc = torch.as_tensor(class_map(COCO_CLASSES, VOC_CLASSES))
    keep = to_voc[coco_index] >= 0
    assert keep.any() and not keep.all()
    p_coco, p_voc = coco.predict(images)[0], voc.predict(images)[0]
    assert torch.equal(p_coco["labels"], coco_index)
    assert torch.equal(p_voc["labels"], to_voc[coco_index[keep]])
    assert torch.equal(p_voc["boxes"], raw["boxes"][keep])


def test_frozen_loss_is_deterministic_and_keeps_norms_in_eval():
    detector = build_detector("toy_faster_rcnn", classes=CLASSES, weights=None)
    norms = [m for m in detector.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in norms]
    img = _image(128, 128)
    torch.manual_seed(1)
    first = detector.loss([img], _targets())
    torch.manual_seed(2)  # proposal sampling uses loss_seed, not the global RNG
    second = detector.loss([img], _targets())
    assert torch.equal(first, second)
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, norms))
    assert not detector.model.training and all(not m.training for m in norms)
    # Losses of other targets differ: the targets are used.
    other = [{"boxes": torch.tensor([[30.0, 30.0, 100.0, 110.0]]), "labels": torch.tensor([1])}]
    assert not torch.equal(first, detector.loss([img], other))


def test_two_stage_loss_samples_afresh_with_each_seed():
    detector = build_detector("toy_faster_rcnn", classes=CLASSES, weights=None)
    assert detector.samples_in_loss
    assert not build_detector("toy_fcos", classes=CLASSES, weights=None).samples_in_loss
    img = _image(128, 128).requires_grad_(True)
    losses = [detector.loss([img], _targets(), seed=s) for s in (1, 1, 2, 3)]
    assert torch.equal(losses[0], losses[1])  # one seed, one draw
    assert len({round(v.item(), 6) for v in losses[1:]}) == 3  # other seeds, other RPN/RoI samples
    grads = [torch.autograd.grad(v, img, retain_graph=True)[0] for v in losses[2:]]
    assert not torch.allclose(grads[0], grads[1])
    assert torch.equal(detector.loss([img], _targets()), detector.loss([img], _targets(), seed=0))  # default: loss_seed


def test_trainable_mode_uses_batchnorm_statistics_and_trains_parameters():
    detector = build_detector("toy_retinanet", classes=CLASSES, weights=None)
    detector.set_trainable(True)
    bn = next(m for m in detector.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    loss = detector.loss(torch.rand(2, 3, 128, 128), _targets() * 2)
    loss.backward()
    assert not torch.equal(before, bn.running_mean)
    assert all(p.grad is not None for p in detector.parameters())
    assert len(detector.predict(torch.rand(1, 3, 128, 128))) == 1 and detector.model.training


def test_toy_backbone_strides_and_sizes():
    detector = build_detector("toy_faster_rcnn", classes=CLASSES, weights=None)
    features = detector.model.backbone(torch.rand(1, 3, 128, 128))
    assert {k: tuple(v.shape[-2:]) for k, v in features.items()} == {"0": (16, 16), "1": (8, 8), "2": (4, 4), "pool": (2, 2)}
    assert all(v.shape[1] == 64 for v in features.values())
    # Anchors of 12-96 px fit 128 px images (torchvision's default 32-512 do not).
    sizes = detector.model.rpn.anchor_generator.sizes
    assert min(min(s) for s in sizes) == 12 and max(max(s) for s in sizes) == 96
    ssd = build_detector("toy_ssdlite", classes=CLASSES, weights=None)
    assert ssd.model.transform.fixed_size == (128, 128)
    # toy_retinanet (MobileNetV3-small) and toy_fcos (ShuffleNetV2: another body family) have
    # the same FPN levels, P6/P7 included.
    for name in ("toy_retinanet", "toy_fcos"):
        features = build_detector(name, classes=CLASSES, weights=None).model.backbone(torch.rand(1, 3, 128, 128))
        assert {k: tuple(v.shape[-2:]) for k, v in features.items()} == {
            "0": (16, 16), "1": (8, 8), "2": (4, 4), "p6": (2, 2), "p7": (1, 1)}, name
        assert all(v.shape[1] == 64 for v in features.values())


def test_toy_ssdlite_default_boxes_fit_toy_shapes():
    """SSD trains a box from the default boxes of IoU >= 0.5 with it (else from its best one):
    most toy shapes must have one, although the finest map is only 8x8."""
    from icm.data.toy import render_toy_image

    ssd = build_detector("toy_ssdlite", classes=CLASSES, weights=None).model
    features = list(ssd.backbone(torch.rand(1, 3, 128, 128)).values())
    assert [tuple(f.shape[-2:]) for f in features] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    images = torchvision.models.detection.image_list.ImageList(torch.rand(1, 3, 128, 128), [(128, 128)])
    default_boxes = ssd.anchor_generator(images, features)[0]
    assert len(default_boxes) == 6 * (64 + 16 + 4 + 1 + 1 + 1)
    rng = np.random.default_rng(0)
    shapes = torch.tensor([obj["box"] for _ in range(60) for obj in render_toy_image(rng, 128)[1]], dtype=torch.float32)
    best = torchvision.ops.box_iou(shapes, default_boxes).max(dim=1).values
    assert (best >= 0.5).float().mean() >= 0.7


@pytest.mark.parametrize("name", ["toy_faster_rcnn", "toy_retinanet", "toy_fcos", "toy_ssdlite"])
def test_toy_detectors_are_small(name):
    detector = build_detector(name, classes=CLASSES, weights=None)
    params = sum(p.numel() for p in detector.parameters())
    assert params < 2.5e6  # < 5 MB in fp16
    # Own classes: labels 1..K in the head, 0 background.
    assert detector.native_to_label_id.tolist() == [1, 2, 3]
    assert torchvision.ops.misc.FrozenBatchNorm2d not in {type(m) for m in detector.modules()}


@pytest.mark.slow
def test_mask_rcnn_masks_at_input_resolution():
    detector = build_detector("mask_rcnn", classes=CLASSES, num_classes=3, weights=None, min_size=96, max_size=128, box_score_thresh=0.0, box_detections_per_img=5)
    img = _image(80, 112)
    pred = detector.predict([img])[0]
    n = len(pred["boxes"])
    assert n > 0 and pred["masks"].shape == (n, 1, 80, 112)
    assert ((pred["masks"] >= 0) & (pred["masks"] <= 1)).all()
    # Without ground-truth masks the loss skips the mask branch; with them it uses it.
    box_only = detector.loss([img], [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])}])
    masks = torch.zeros(1, 80, 112, dtype=torch.uint8)
    masks[0, 10:70, 10:60] = 1
    with_masks = detector.loss([img], [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1]), "masks": masks}])
    assert torch.isfinite(box_only) and with_masks > box_only


@pytest.mark.parametrize("name", ["toy_faster_rcnn", "toy_retinanet", "toy_fcos", "toy_ssdlite"])
def test_toy_models_use_a_batchnorm_momentum_that_short_training_can_follow(name):
    detector = build_detector(name, classes=["a", "b"], num_classes=2, weights=None)
    momenta = {m.momentum for m in detector.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert momenta == {0.1}


def test_a_torchvision_reference_checkpoint_loads_weights_only(tmp_path):
    import argparse

    classes = ["a", "b", "c"]
    trained = build_detector("toy_faster_rcnn", classes=classes, num_classes=3, weights=None)
    path = tmp_path / "model_25.pth"  # what references/detection/train.py saves
    torch.save({"model": trained.model.state_dict(), "optimizer": {}, "epoch": 25,
                "args": argparse.Namespace(lr=0.02, epochs=26)}, path)
    again = build_detector("toy_faster_rcnn", classes=classes, num_classes=3, weights=str(path))
    for (name, a), b in zip(trained.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_voc_config_names_registered_detectors():
    from icm.aafg.train import parse_args as stage_one_args
    from icm.detectors import available
    from icm.evaluation.evaluate import parse_args as evaluation_args

    seen = stage_one_args(["--config", "configs/voc.yaml"])
    assert seen.dataset == "voc" and seen.models == "yolov3,faster_rcnn,centernet_pascal512"
    evaluation = evaluation_args(["--config", "configs/voc.yaml"])
    assert set(evaluation.detectors) <= set(available()) and "centernet_pascal384" in evaluation.unseen_detectors
    assert evaluation.weights["centernet_pascal512"] == "default"
