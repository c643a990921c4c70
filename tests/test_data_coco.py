"""icm.data.coco on the hand-written instances file under tests/fixtures/coco."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from icm.data.coco import read_coco

COCO_DIR = Path(__file__).parent / "fixtures" / "coco"
ANN_FILE = COCO_DIR / "instances.json"
IMAGES = COCO_DIR / "images"


def test_boxes_labels_crowd_flags_and_category_mapping():
    with pytest.warns(UserWarning) as caught:
        ds = read_coco(ANN_FILE, IMAGES)
    # Category ids 18, 1, 3 -> contiguous indices in increasing id order.
    assert ds.classes == ["person", "car", "dog"]
    assert ds.class_ids == [1, 3, 18]
    assert ds.name == "instances"
    # Images sorted by id; the image without annotations is kept.
    assert [s.id for s in ds] == ["3", "7", "12"]
    empty, two, clipped = ds.samples

    assert (empty.width, empty.height, empty.num_objects) == (40, 30, 0)

    assert (two.width, two.height) == (64, 48)
    assert two.image_path == IMAGES / "000000000007.jpg"
    np.testing.assert_array_equal(two.boxes, [[4, 9, 30, 40], [0, 0, 64, 48]])  # xywh -> xyxy
    np.testing.assert_array_equal(two.labels, [2, 0])
    np.testing.assert_array_equal(two.iscrowd, [False, True])
    assert not two.difficult.any() and not two.group.any()

    # No width/height in the entry: from the header (32x24); box clipped, zero-width dropped.
    assert (clipped.width, clipped.height) == (32, 24)
    np.testing.assert_allclose(clipped.boxes, [[20.5, 10, 32, 24]])
    np.testing.assert_array_equal(clipped.labels, [1])

    assert [str(w.message) for w in caught] == [
        "instances: 1 boxes clipped to the image, 1 boxes with no area dropped"
    ]


def test_class_ids_translate_labels_back_to_coco_category_ids():
    with pytest.warns(UserWarning):
        ds = read_coco(ANN_FILE, IMAGES)
    source = json.loads(ANN_FILE.read_text())
    names = {c["id"]: c["name"] for c in source["categories"]}
    for label, cat_id in enumerate(ds.class_ids):
        assert names[cat_id] == ds.classes[label]


@pytest.fixture
def coco_copy(tmp_path):
    shutil.copytree(COCO_DIR, tmp_path / "coco")
    return tmp_path / "coco"


def test_malformed_json_names_file_and_line(coco_copy):
    ann = coco_copy / "instances.json"
    ann.write_text('{\n  "images": [\n    {"id": 1,, "file_name": "a.jpg"}\n  ]\n}\n')
    with pytest.raises(ValueError, match=r"instances\.json:3:\d+: malformed JSON"):
        read_coco(ann, coco_copy / "images")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("categories"), r"key 'categories' missing or not a list"),
        (lambda d: d["images"][1].pop("file_name"), r"images\[1\] has no 'file_name'"),
        (lambda d: d["annotations"][2].pop("bbox"), r"annotations\[2\] has no 'bbox'"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\] 'bbox' is not \[x, y, w, h\]"),
        (lambda d: d["annotations"][0].update(image_id=99), r"annotations\[0\] refers to unknown image_id 99"),
    ],
)
def test_bad_structure_names_file_entry_and_key(coco_copy, edit, message):
    ann = coco_copy / "instances.json"
    data = json.loads(ann.read_text())
    edit(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances\.json: " + message):
        read_coco(ann, coco_copy / "images")


def test_unknown_category_is_an_error_or_a_counted_skip(coco_copy):
    ann = coco_copy / "instances.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 77
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotation 1 has unknown category_id 77"):
        read_coco(ann, coco_copy / "images")
    with pytest.warns(UserWarning, match="1 objects of unknown classes skipped"):
        ds = read_coco(ann, coco_copy / "images", skip_unknown=True)
    np.testing.assert_array_equal(ds[1].labels, [0])
    np.testing.assert_array_equal(ds[1].iscrowd, [True])


def test_missing_image_is_an_error_or_a_counted_skip(coco_copy):
    (coco_copy / "images" / "000000000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000000000003\.jpg: image file not found \(image 3 of"):
        read_coco(coco_copy / "instances.json", coco_copy / "images")
    with pytest.warns(UserWarning, match="1 samples with missing images skipped"):
        ds = read_coco(coco_copy / "instances.json", coco_copy / "images", skip_missing=True)
    assert [s.id for s in ds] == ["7", "12"]


def test_image_info_file_without_annotations_gives_empty_samples(coco_copy):
    ann = coco_copy / "instances.json"
    data = json.loads(ann.read_text())
    del data["annotations"]
    ann.write_text(json.dumps(data))
    ds = read_coco(ann, coco_copy / "images")
    assert len(ds) == 3 and all(s.num_objects == 0 for s in ds)
