"""The Detector contract for EVERY registered name (random weights, CPU, 64-128 px):
finite loss with a finite, non-zero input gradient; predictions inside the image with
scores in [0, 1] and labels in the dataset's range; frozen parameters and BatchNorm
statistics untouched by ``loss``."""

import pytest
import torch
from torch import nn

from icm.detectors import Detector, available, build_detector

CLASSES = ["circle", "square", "triangle"]

# Build options that keep each architecture near the test image size (and let random
# weights produce some detections); names not listed (e.g. CenterNet) use their defaults.
_TV_SMALL = {"min_size": 128, "max_size": 128}
BUILD_KWARGS = {
    "yolov3": {"imgsz": None},
    "yolov3-tiny": {"imgsz": None},
    "yolov5": {"imgsz": None},
    "yolov8": {"imgsz": None},
    "yolo11": {"imgsz": None},
    "rtdetr": {"imgsz": None},
    "faster_rcnn": {**_TV_SMALL, "box_score_thresh": 0.0},
    "faster_rcnn_v2": {**_TV_SMALL, "box_score_thresh": 0.0},
    "mask_rcnn": {**_TV_SMALL, "box_score_thresh": 0.0, "box_detections_per_img": 10},
    "retinanet": {**_TV_SMALL, "score_thresh": 0.0},
    "fcos": {**_TV_SMALL, "score_thresh": 0.0},
    "ssd300": {"score_thresh": 0.0},
    "ssdlite": {"min_size": 128, "score_thresh": 0.0},
    "toy_faster_rcnn": {"box_score_thresh": 0.0},
    "toy_retinanet": {"score_thresh": 0.0},
    "toy_fcos": {"score_thresh": 0.0},
    "toy_ssdlite": {"score_thresh": 0.0},
}
# Families whose random-weight predictions must not be empty at the thresholds above.
OWN_FAMILIES = ("ultralytics", "torchvision")
# Big architectures with random weights take 10-60 s here; each family keeps fast members.
SLOW = {
    "yolov3", "yolov5", "yolo11", "rtdetr", "faster_rcnn", "faster_rcnn_v2", "mask_rcnn", "retinanet", "fcos", "ssd300",
    "centernet", "centernet_res18", "centernet_pascal384", "centernet_pascal512",
}  # fmt: skip


def _params(names):
    """The library's detectors (not the fakes other test modules register as eval_test_*)."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names if not n.startswith("eval_test_")]


def _images():
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(3, 96, 128, generator=gen), torch.rand(3, 112, 80, generator=gen)]


def _targets():
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[5.0, 30.0, 50.0, 100.0]]), "labels": torch.tensor([1])},
    ]


def _norm_state(detector: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{k}": v.clone()
        for name, m in detector.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for k, v in m.state_dict().items()
    }


def test_registry_lists_the_model_set():
    names = set(available())
    seen = {"yolov3", "faster_rcnn"}
    unseen = {"retinanet", "fcos", "ssd300", "ssdlite", "faster_rcnn_v2", "mask_rcnn", "yolov5", "yolov8", "yolo11", "rtdetr"}
    toys = {"toy_yolov3", "toy_yolov8", "toy_faster_rcnn", "toy_retinanet", "toy_fcos", "toy_ssdlite"}
    assert seen | unseen | toys <= names
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        build_detector("nope")


@pytest.mark.parametrize("name", _params(available()))
def test_detector_contract(name):
    detector = build_detector(name, classes=CLASSES, num_classes=len(CLASSES), weights=None, **BUILD_KWARGS.get(name, {}))
    assert isinstance(detector, Detector)
    assert detector.classes == CLASSES and not detector.training
    assert not any(p.requires_grad for p in detector.parameters())
    norms_before = _norm_state(detector)

    images = [img.requires_grad_(True) for img in _images()]
    loss = detector.loss(images, _targets())
    assert loss.dim() == 0 and torch.isfinite(loss)
    grads = torch.autograd.grad(loss, images)
    for g, img in zip(grads, images):
        assert g.shape == img.shape and torch.isfinite(g).all()
    assert sum(g.abs().sum() for g in grads) > 0

    norms_after = _norm_state(detector)
    assert all(torch.equal(norms_before[k], norms_after[k]) for k in norms_before)
    assert not detector.training

    predictions = detector.predict([img.detach() for img in images])
    assert len(predictions) == 2
    for pred, img in zip(predictions, images):
        h, w = img.shape[-2:]
        n = len(pred["boxes"])
        assert pred["boxes"].shape == (n, 4) and pred["scores"].shape == (n,) and pred["labels"].shape == (n,)
        boxes = pred["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 0] <= boxes[:, 2]).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all() and (boxes[:, 1] <= boxes[:, 3]).all()
        assert ((pred["scores"] >= 0) & (pred["scores"] <= 1)).all()
        assert ((pred["labels"] >= 0) & (pred["labels"] < len(CLASSES))).all()
        if detector.family in OWN_FAMILIES:
            assert n > 0
        if "masks" in pred:
            assert pred["masks"].shape[0] == n and pred["masks"].shape[-2:] == (h, w)
            assert ((pred["masks"] >= 0) & (pred["masks"] <= 1)).all()


@pytest.mark.parametrize("name", ["toy_yolov8", "toy_faster_rcnn"])
def test_batch_tensor_and_pseudo_targets(name):
    detector = build_detector(name, classes=CLASSES, weights=None, pseudo_threshold=0.0, **BUILD_KWARGS.get(name, {}))
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    pseudo = detector.pseudo_targets(list(images.detach()))
    assert all(len(t["boxes"]) > 0 for t in pseudo)  # threshold 0: every prediction is a target
    loss = detector.loss(images, "pseudo")
    (grad,) = torch.autograd.grad(loss, images)
    assert torch.isfinite(loss) and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        detector.loss(images, pseudo[:1])
