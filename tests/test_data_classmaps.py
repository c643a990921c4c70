"""icm.data.classmaps, cross-checked against ultralytics' and torchvision's COCO tables."""

import numpy as np
import pytest

from icm.data.classmaps import (
    COCO_91_IDS,
    COCO_CLASSES,
    OID_TO_COCO_ALIASES,
    VOC_CLASSES,
    VOC_TO_COCO_ALIASES,
    canonical_name,
    class_map,
)


def test_coco_classes_match_ultralytics_order():
    from ultralytics.cfg import get_cfg  # noqa: F401 - makes sure the package is importable
    from ultralytics.utils import ROOT, YAML

    names = YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]
    assert COCO_CLASSES == [names[i] for i in range(80)]


def test_coco_91_ids_match_torchvision_and_ultralytics():
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
    from ultralytics.data.converter import coco80_to_coco91_class

    tv_categories = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # index = category id
    assert [tv_categories[i] for i in COCO_91_IDS] == COCO_CLASSES
    assert COCO_91_IDS == list(coco80_to_coco91_class())
    assert len(COCO_91_IDS) == 80 and COCO_91_IDS == sorted(set(COCO_91_IDS))


def test_every_voc_class_has_a_coco_class():
    voc_to_coco = class_map(VOC_CLASSES, COCO_CLASSES)
    assert (voc_to_coco >= 0).all()
    named = {voc: COCO_CLASSES[j] for voc, j in zip(VOC_CLASSES, voc_to_coco, strict=True)}
    assert named["aeroplane"] == "airplane"
    assert named["motorbike"] == "motorcycle"
    assert named["sofa"] == "couch"
    assert named["tvmonitor"] == "tv"
    assert named["diningtable"] == "dining table"
    assert named["pottedplant"] == "potted plant"
    assert named["person"] == "person" and named["cow"] == "cow"
    assert len(set(voc_to_coco.tolist())) == 20  # one-to-one


def test_coco_to_voc_drops_classes_voc_lacks():
    coco_to_voc = class_map(COCO_CLASSES, VOC_CLASSES)
    assert coco_to_voc.dtype == np.int64 and coco_to_voc.shape == (80,)
    assert (coco_to_voc >= 0).sum() == 20
    assert coco_to_voc[COCO_CLASSES.index("airplane")] == VOC_CLASSES.index("aeroplane")
    assert coco_to_voc[COCO_CLASSES.index("tv")] == VOC_CLASSES.index("tvmonitor")
    assert coco_to_voc[COCO_CLASSES.index("giraffe")] == -1
    # Inverse of the VOC -> COCO map on the 20 shared classes.
    voc_to_coco = class_map(VOC_CLASSES, COCO_CLASSES)
    np.testing.assert_array_equal(coco_to_voc[voc_to_coco], np.arange(20))


def test_oid_names_map_case_insensitively_with_aliases():
    oid = ["Person", "Television", "Doughnut", "Man", "Kitchen & dining room table", "Car"]
    oid_to_coco = class_map(oid, COCO_CLASSES)
    assert [COCO_CLASSES[j] if j >= 0 else None for j in oid_to_coco] == [
        "person", "tv", "donut", None, "dining table", "car"
    ]
    coco_to_oid = class_map(COCO_CLASSES, oid)
    assert coco_to_oid[COCO_CLASSES.index("donut")] == 2
    assert (coco_to_oid >= 0).sum() == 5
    assert all(v in COCO_CLASSES for v in OID_TO_COCO_ALIASES.values())
    assert all(v in COCO_CLASSES for v in VOC_TO_COCO_ALIASES.values())


def test_custom_aliases_and_ambiguous_targets():
    assert canonical_name("  Sofa ") == "couch"
    assert class_map(["circle", "box"], ["square", "circle"], aliases={"box": "square"}).tolist() == [1, 0]
    assert class_map(["a"], ["b"], aliases={}).tolist() == [-1]
    with pytest.raises(ValueError, match="'sofa' and 'couch' both map to 'couch'"):
        class_map(COCO_CLASSES, ["sofa", "couch"])
