"""Ultralytics family: letterbox geometry, class translation, the loss against ultralytics'
own criterion, zoo-file loading through ultralytics' loader, trainable mode."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from icm.data.classmaps import COCO_CLASSES, VOC_CLASSES, class_map
from icm.detectors import build_detector
from icm.detectors.ultralytics_family import PAD_VALUE

CLASSES = ["circle", "square", "triangle"]

ROOT = Path(__file__).resolve().parent.parent


def _image(h, w, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def test_letterbox_pads_centred_to_the_stride_and_resizes_the_long_side():
    detector = build_detector("toy_yolov3", classes=CLASSES, weights=None, imgsz=64)
    img = _image(40, 100)
    batch, metas = detector.letterbox([img])
    # long side 100 -> 64, short side 40 -> 26; padded to 32 x 64 (stride 32), centred.
    assert batch.shape == (1, 3, 32, 64)
    sx, sy, left, top, w, h = metas[0]
    assert (sx, sy, left, top, w, h) == (0.64, 0.65, 0, 3, 100, 40)
    assert torch.all(batch[0, :, :3] == PAD_VALUE) and torch.all(batch[0, :, 29:] == PAD_VALUE)
    expected = F.interpolate(img[None], size=(26, 64), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(batch[0, :, 3:29], expected)
    # A batch of different sizes shares one canvas; the native size is kept with imgsz=None.
    native = build_detector("toy_yolov3", classes=CLASSES, weights=None)
    batch, metas = native.letterbox([_image(40, 100), _image(70, 30)])
    assert batch.shape == (2, 3, 96, 128)
    assert metas[1] == (1.0, 1.0, 49, 13, 30, 70)
    # RT-DETR: stretched to imgsz x imgsz, as ultralytics' RT-DETR predictor does.
    rtdetr = build_detector("rtdetr", classes=CLASSES, num_classes=3, weights=None, imgsz=64)
    batch, metas = rtdetr.letterbox([_image(40, 100)])
    assert batch.shape == (1, 3, 64, 64) and metas[0] == (0.64, 1.6, 0, 0, 100, 40)


def test_boxes_map_back_to_input_pixels():
    """The same content at twice the resolution letterboxes to the same tensor (imgsz fixed),
    so every box must come back exactly twice as large."""
    detector = build_detector("toy_yolov8", classes=CLASSES, weights=None, imgsz=64)
    small = _image(48, 64)
    large = F.interpolate(small[None], scale_factor=2, mode="nearest")[0]
    p_small, p_large = detector.predict([small, large])
    assert len(p_small["boxes"]) > 0
    assert torch.allclose(p_large["boxes"], 2 * p_small["boxes"], atol=1e-3)
    assert torch.allclose(p_large["scores"], p_small["scores"], atol=1e-5)
    assert torch.equal(p_large["labels"], p_small["labels"])


def test_predictions_translate_coco_to_voc():
    """A COCO-headed network reporting VOC classes keeps exactly the COCO detections whose
    class exists in VOC, relabelled (airplane -> aeroplane ...)."""
    coco = build_detector("yolov8", weights=None, imgsz=None, conf=0.0)
    assert coco.classes == COCO_CLASSES and coco.native_classes == COCO_CLASSES
    bias = torch.full((80,), -8.0)
    bias[[COCO_CLASSES.index(c) for c in ("person", "airplane", "truck", "giraffe")]] = 0.0
    for branch in coco.model.model[-1].cv3:  # random scores spread over 2 VOC and 2 non-VOC classes
        branch[-1].bias.copy_(bias)
    voc = build_detector("yolov8", classes=VOC_CLASSES, weights=None, imgsz=None, conf=0.0)
    voc.load_state_dict(coco.state_dict())
    images = [_image(64, 96, seed=1), _image(96, 64, seed=2)]
    to_voc = torch.as_tensor(class_map(COCO_CLASSES, VOC_CLASSES))
    for p_coco, p_voc in zip(coco.predict(images), voc.predict(images)):
        keep = to_voc[p_coco["labels"]] >= 0
        assert keep.any() and not keep.all()  # some COCO classes are dropped
        assert torch.equal(p_voc["boxes"], p_coco["boxes"][keep])
        assert torch.equal(p_voc["labels"], to_voc[p_coco["labels"][keep]])


def test_loss_equals_ultralytics_criterion_on_native_targets():
    """Our loss with VOC targets == ultralytics' own loss with the COCO class ids and the
    letterboxed, normalised boxes, divided by the batch size."""
    detector = build_detector("yolov8", classes=VOC_CLASSES, weights=None, imgsz=None)
    img = _image(64, 96)
    voc_targets = [{"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0], [60.0, 30.0, 90.0, 60.0]]), "labels": torch.tensor([0, 19])}]
    ours = detector.loss([img], voc_targets)
    coco_ids = [COCO_CLASSES.index("airplane"), COCO_CLASSES.index("tv")]
    # 64 x 96 is already a multiple of 32: no resize, no padding.
    xywh = torch.tensor([[30.0, 24.0, 40.0, 32.0], [75.0, 45.0, 30.0, 30.0]]) / torch.tensor([96.0, 64.0, 96.0, 64.0])
    batch = {"img": img[None], "cls": torch.tensor(coco_ids, dtype=torch.float).view(-1, 1), "bboxes": xywh, "batch_idx": torch.zeros(2)}
    reference, _ = detector.model.loss(batch)
    assert torch.allclose(ours, reference.sum(), rtol=1e-5)
    # A target of a class the detector does not know is ignored.
    unknown = [{"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0]]), "labels": torch.tensor([0])}]
    no_objects = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    other = build_detector("yolov8", classes=["unicorn"], weights=None, imgsz=None)
    other.load_state_dict(detector.state_dict())
    assert torch.allclose(other.loss([img], unknown), other.loss([img], no_objects))


def test_trainable_mode_trains_batchnorm_and_parameters():
    detector = build_detector("toy_yolov8", classes=CLASSES, weights=None)
    detector.set_trainable(True)
    assert detector.training and detector.model.training
    bn = next(m for m in detector.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    loss = detector.loss(images, targets)
    loss.backward()
    assert not torch.equal(before, bn.running_mean)
    assert all(p.grad is not None for p in detector.parameters() if p.requires_grad)
    preds = detector.predict(images)  # evaluates in eval mode, stays trainable
    assert len(preds) == 2 and detector.model.training
    detector.freeze()
    assert not detector.training and not any(p.requires_grad for p in detector.parameters())


def test_zoo_file_loads_through_ultralytics_loader(tmp_path):
    """An ultralytics .pt (a pickled model, as ultralytics writes it) loads by path through
    ultralytics' safe loader (weights_only and its allow-list: tests/test_hostile_inputs.py
    shows a payload refused); its own class names become the native classes; a fine-tune
    head (num_classes) transfers the rest."""
    from ultralytics.nn.tasks import DetectionModel

    network = DetectionModel("yolov8n.yaml", nc=4, verbose=False)
    network.names = {0: "person", 1: "car", 2: "dog", 3: "airplane"}
    path = tmp_path / "custom.pt"
    torch.save({"model": network, "train_args": {}}, path)

    detector = build_detector("yolov8", weights=path, classes=VOC_CLASSES, imgsz=None)  # ultralytics' safe loader
    assert detector.native_classes == ["person", "car", "dog", "airplane"]
    assert detector.label_map.native_to_dataset.tolist() == [14, 6, 11, 0]
    assert torch.equal(detector.model.model[0].conv.weight, network.model[0].conv.weight)

    finetune = build_detector("yolov8", weights=path, classes=CLASSES, num_classes=3, imgsz=None)
    assert finetune.model.nc == 3
    assert torch.equal(finetune.model.model[0].conv.weight, network.model[0].conv.weight)

    with pytest.raises(FileNotFoundError, match="nothere.pt: weights file not found"):
        build_detector("yolov8", weights=tmp_path / "nothere.pt")
