"""Label spaces of the Detector interface: LabelMap (native <-> dataset by name),
resolve_classes (which head a build gets), eval_mode."""

import pytest
import torch
from torch import nn

from icm.data.classmaps import COCO_CLASSES, VOC_CLASSES
from icm.detectors.base import LabelMap, eval_mode, resolve_classes


def test_label_map_coco_to_voc_and_back():
    label_map = LabelMap(COCO_CLASSES, VOC_CLASSES)
    coco = torch.tensor([COCO_CLASSES.index(c) for c in ("airplane", "truck", "tv", "person", "giraffe")])
    labels, keep = label_map.to_dataset(coco)
    assert keep.tolist() == [True, False, True, True, False]
    assert labels.tolist() == [VOC_CLASSES.index("aeroplane"), VOC_CLASSES.index("tvmonitor"), VOC_CLASSES.index("person")]
    native, keep = label_map.to_native(torch.tensor([VOC_CLASSES.index("sofa"), 19, -1, 25]))
    assert keep.tolist() == [True, True, False, False]  # -1 and out-of-range labels are dropped
    assert native.tolist() == [COCO_CLASSES.index("couch"), COCO_CLASSES.index("tv")]


def test_label_map_identity_needs_no_names_lookup():
    label_map = LabelMap(["a", "b"], ["a", "b"])
    labels, keep = label_map.to_dataset(torch.tensor([1, 0, 1]))
    assert labels.tolist() == [1, 0, 1] and keep.all()


def test_resolve_classes():
    toy = ["circle", "square"]
    assert resolve_classes(toy, 2, COCO_CLASSES) == (toy, toy)  # own head
    assert resolve_classes(None, 2, COCO_CLASSES) == (["class_0", "class_1"], ["class_0", "class_1"])
    assert resolve_classes(VOC_CLASSES, None, COCO_CLASSES) == (COCO_CLASSES, VOC_CLASSES)  # zoo head, mapped
    assert resolve_classes(None, None, COCO_CLASSES) == (COCO_CLASSES, COCO_CLASSES)
    assert resolve_classes(toy, None, None) == (toy, toy)  # toy architectures
    with pytest.raises(ValueError, match="num_classes=3 but 2 class names"):
        resolve_classes(toy, 3, None)
    with pytest.raises(ValueError, match="pass classes or num_classes"):
        resolve_classes(None, None, None)


def test_eval_mode_restores_training():
    module = nn.Sequential(nn.BatchNorm1d(2))
    module.train()
    with eval_mode(module):
        assert not module.training and not module[0].training
    assert module.training and module[0].training
