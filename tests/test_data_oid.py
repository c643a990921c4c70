"""icm.data.oid on the hand-written Open Images CSVs under tests/fixtures/oid."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from icm.data.oid import read_class_descriptions, read_image_ids, read_oid

OID_DIR = Path(__file__).parent / "fixtures" / "oid"
BOXES = OID_DIR / "boxes.csv"
CLASSES = OID_DIR / "class-descriptions.csv"
IMAGES = OID_DIR / "images"


def test_boxes_in_pixels_group_flag_and_empty_image():
    with pytest.warns(UserWarning) as caught:
        ds = read_oid(BOXES, CLASSES, IMAGES)
    assert ds.classes == ["Dog", "Person", "Car", "Airplane", "Kitchen & dining room table"]
    assert ds.class_ids == ["/m/0bt9lr", "/m/01g317", "/m/0k4j", "/m/0cmf2", "/m/04v6l4"]
    assert ds.name == "oid_boxes"
    # Every image in the folder, sorted; rows of images not there (ffff...) are ignored.
    assert [s.id for s in ds] == ["a1b2c3d4e5f60001", "a1b2c3d4e5f60002", "a1b2c3d4e5f60003"]
    s1, s2, s3 = ds.samples

    # Normalised coordinates times the header size (64x48).
    assert (s1.width, s1.height) == (64, 48)
    np.testing.assert_array_equal(s1.boxes, [[4, 12, 32, 36], [32, 0, 64, 48]])
    np.testing.assert_array_equal(s1.labels, [0, 1])
    np.testing.assert_array_equal(s1.group, [False, True])
    assert not s1.difficult.any() and not s1.iscrowd.any()

    assert (s2.width, s2.height, s2.num_objects) == (40, 30, 0)  # no rows: no objects

    assert (s3.width, s3.height) == (32, 24)
    np.testing.assert_array_equal(s3.boxes, [[8, 12, 24, 24]])  # the XMin == XMax row is dropped
    np.testing.assert_array_equal(s3.labels, [2])

    assert [str(w.message) for w in caught] == ["oid_boxes: 1 boxes with no area dropped"]


def test_class_subset_by_name_or_mid_and_image_id_list():
    ds = read_oid(BOXES, CLASSES, IMAGES, image_ids=OID_DIR / "image_ids.csv", classes=["person", "/m/0bt9lr"])
    assert ds.classes == ["Person", "Dog"]
    assert ds.class_ids == ["/m/01g317", "/m/0bt9lr"]
    assert [s.id for s in ds] == ["a1b2c3d4e5f60001", "a1b2c3d4e5f60002"]
    np.testing.assert_array_equal(ds[0].boxes, [[4, 12, 32, 36], [32, 0, 64, 48]])
    np.testing.assert_array_equal(ds[0].labels, [1, 0])
    # A plain list of ids works too; rows of classes outside the subset are ignored.
    ds = read_oid(BOXES, CLASSES, IMAGES, image_ids=["a1b2c3d4e5f60003"], classes=["Dog"])
    assert ds[0].num_objects == 0


def test_class_descriptions_with_or_without_header(tmp_path):
    with_header = tmp_path / "with_header.csv"
    with_header.write_text('LabelName,DisplayName\n/m/01,"Table, kitchen"\n/m/02,Cat\n')
    assert read_class_descriptions(with_header) == {"/m/01": "Table, kitchen", "/m/02": "Cat"}
    assert list(read_class_descriptions(CLASSES))[:2] == ["/m/0bt9lr", "/m/01g317"]


def test_image_ids_one_per_line_or_csv(tmp_path):
    plain = tmp_path / "ids.txt"
    plain.write_text("b\na\n\n")
    assert read_image_ids(plain) == ["b", "a"]
    assert read_image_ids(OID_DIR / "image_ids.csv") == ["a1b2c3d4e5f60001", "a1b2c3d4e5f60002"]


@pytest.fixture
def oid_copy(tmp_path):
    shutil.copytree(OID_DIR, tmp_path / "oid")
    return tmp_path / "oid"


def test_malformed_box_csv_names_file_and_line(oid_copy):
    boxes = oid_copy / "boxes.csv"
    lines = boxes.read_text().splitlines()
    lines[2] = "a1b2c3d4e5f60001,xclick,/m/01g317,1,0.5,one,0,1,1,0,1,0,0"
    boxes.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"boxes\.csv:3: not a number"):
        read_oid(boxes, oid_copy / "class-descriptions.csv", oid_copy / "images")
    lines[2] = "a1b2c3d4e5f60001,xclick,/m/01g317,1,0.5"
    boxes.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"boxes\.csv:3: wrong number of fields"):
        read_oid(boxes, oid_copy / "class-descriptions.csv", oid_copy / "images")
    boxes.write_text("ImageID,LabelName,XMin,XMax\n")
    with pytest.raises(ValueError, match=r"boxes\.csv:1: missing columns \['YMin', 'YMax'\]"):
        read_oid(boxes, oid_copy / "class-descriptions.csv", oid_copy / "images")


def test_malformed_class_csv_names_file_and_line(oid_copy):
    classes = oid_copy / "class-descriptions.csv"
    classes.write_text("/m/0bt9lr,Dog\n/m/01g317\n")
    with pytest.raises(ValueError, match=r"class-descriptions\.csv:2: expected 'LabelName,DisplayName'"):
        read_oid(oid_copy / "boxes.csv", classes, oid_copy / "images")


def test_unknown_label_is_an_error_or_a_counted_skip(oid_copy):
    classes = oid_copy / "class-descriptions.csv"
    classes.write_text("/m/0bt9lr,Dog\n/m/0k4j,Car\n")  # no Person
    with pytest.raises(ValueError, match=r"boxes\.csv:3: unknown LabelName '/m/01g317'"):
        read_oid(oid_copy / "boxes.csv", classes, oid_copy / "images")
    with pytest.warns(UserWarning) as caught:
        ds = read_oid(oid_copy / "boxes.csv", classes, oid_copy / "images", skip_unknown=True)
    assert [str(w.message) for w in caught] == [
        "oid_boxes: 1 boxes with no area dropped, 1 objects of unknown classes skipped"
    ]
    np.testing.assert_array_equal(ds[0].labels, [0])
    with pytest.raises(ValueError, match=r"no class named 'Unicorn'"):
        read_oid(oid_copy / "boxes.csv", classes, oid_copy / "images", classes=["Unicorn"])


def test_missing_listed_image_is_an_error_or_a_counted_skip(oid_copy):
    (oid_copy / "images" / "a1b2c3d4e5f60002.jpg").unlink()
    ids = oid_copy / "image_ids.csv"
    with pytest.raises(FileNotFoundError, match=r"a1b2c3d4e5f60002\.jpg: image file not found"):
        read_oid(oid_copy / "boxes.csv", oid_copy / "class-descriptions.csv", oid_copy / "images", image_ids=ids)
    with pytest.warns(UserWarning, match="1 samples with missing images skipped") as caught:
        ds = read_oid(oid_copy / "boxes.csv", oid_copy / "class-descriptions.csv", oid_copy / "images",
                      image_ids=ids, skip_missing=True)
    assert len(caught) == 1
    assert [s.id for s in ds] == ["a1b2c3d4e5f60001"]


def test_image_level_labels_and_hierarchy_expansion(tmp_path):
    """Dog is an Animal here: its box is an Animal box too, and Animal verified absent in an
    image makes Dog verified absent there as well (the challenge's expansion)."""
    import json

    classes = tmp_path / "classes.csv"
    classes.write_text(CLASSES.read_text() + "/m/0jbk,Animal\n")
    hierarchy = tmp_path / "hierarchy.json"
    hierarchy.write_text(json.dumps({"LabelName": "/m/0bl9f", "Subcategory": [
        {"LabelName": "/m/0jbk", "Subcategory": [{"LabelName": "/m/0bt9lr"}]},
        {"LabelName": "/m/01g317"}, {"LabelName": "/m/0k4j"}]}))
    labels = tmp_path / "labels.csv"
    labels.write_text("ImageID,Source,LabelName,Confidence\n"
                      "a1b2c3d4e5f60001,verification,/m/0bt9lr,1\n"
                      "a1b2c3d4e5f60002,verification,/m/0jbk,0\n"
                      "a1b2c3d4e5f60002,verification,/m/0k4j,1\n"
                      "a1b2c3d4e5f60003,verification,/m/unknown,1\n")
    ds = read_oid(BOXES, classes, IMAGES, image_labels_csv=labels, hierarchy_json=hierarchy)
    names = ds.classes
    first, second, third = ds.samples
    assert [names[c] for c in first.labels] == ["Dog", "Animal", "Person"]  # the Dog box again as Animal
    np.testing.assert_array_equal(first.boxes[0], first.boxes[1])
    assert first.group.tolist() == [False, False, True]
    assert sorted(names[c] for c in first.verified) == ["Animal", "Dog"]  # present, expanded up
    assert sorted(names[c] for c in second.verified) == ["Animal", "Car", "Dog"]  # Animal absent: Dog absent too
    assert third.verified.tolist() == []
    plain = read_oid(BOXES, classes, IMAGES)
    assert len(plain.samples[0].labels) == 2 and plain.samples[0].verified.tolist() == []
    labels.write_text("ImageID,LabelName\nx,y\n")
    with pytest.raises(ValueError, match="labels.csv:1: image-level labels lack the column.s. Confidence"):
        read_oid(BOXES, classes, IMAGES, image_labels_csv=labels)


def test_open_images_metric_in_evaluation_over_the_classes_a_detector_can_predict(tmp_path):
    from icm.evaluation.engine import detection_metrics

    labels = tmp_path / "labels.csv"
    labels.write_text("ImageID,Source,LabelName,Confidence\na1b2c3d4e5f60002,verification,/m/0k4j,0\n")
    ds = read_oid(BOXES, CLASSES, IMAGES, image_labels_csv=labels)
    car, dog = ds.classes.index("Car"), ds.classes.index("Dog")
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    third = ds.samples[2]
    perfect_cars = [empty, {"boxes": np.array([[5.0, 5.0, 20.0, 20.0]]), "scores": np.array([0.99]),
                            "labels": np.array([car])},  # a car in image 2, verified absent: a false positive
                    {"boxes": third.boxes[third.labels == car], "scores": np.array([0.9] * int((third.labels == car).sum())),
                     "labels": np.full(int((third.labels == car).sum()), car)}]
    results, _, notes = detection_metrics(ds, {"cars": perfect_cars}, predictable={"cars": [car, dog]})
    # Car: one box (image 3; its other row has no area), found after a false positive of
    # higher score: precision 1/2 at recall 1 -> AP 1/2. Dog: one box (image 1), never
    # detected: AP 0. Person is not predictable, so not averaged. The mean: 1/4.
    assert third.labels.tolist() == [car]
    assert results["map-oid:cars"] == pytest.approx((1 / 2 + 0) / 2)
    note = next(n for n in notes if n.startswith("map-oid:cars"))
    assert "over the 2 classes with boxes among the 2 it can predict: Dog, Car" in note
