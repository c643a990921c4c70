"""icm.data.voc on the hand-written VOCdevkit under tests/fixtures (and bad copies of it)."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from icm.data.voc import VOC_CLASSES, read_voc

DEVKIT = Path(__file__).parent / "fixtures" / "VOCdevkit"
C = {name: i for i, name in enumerate(VOC_CLASSES)}


def test_voc2007_test_boxes_labels_flags_and_sizes():
    with pytest.warns(UserWarning) as caught:
        ds = read_voc(DEVKIT, split="test")
    assert ds.name == "voc2007_test"
    assert ds.classes == VOC_CLASSES
    assert [s.id for s in ds] == ["2007_000001", "2007_000002", "2007_000003", "2007_000004"]
    s1, s2, s3, s4 = ds.samples

    # 1-based inclusive -> 0-based continuous: x1 = xmin - 1, x2 = xmax.
    assert (s1.width, s1.height) == (64, 48)
    np.testing.assert_array_equal(s1.boxes, [[4, 9, 30, 40], [0, 0, 64, 48]])
    assert s1.boxes.dtype == np.float32
    np.testing.assert_array_equal(s1.labels, [C["dog"], C["person"]])
    np.testing.assert_array_equal(s1.difficult, [False, True])
    assert not s1.iscrowd.any() and not s1.group.any()
    assert s1.image_path == DEVKIT / "VOC2007" / "JPEGImages" / "000001.jpg"

    # An annotation without <object>: a sample with no objects.
    assert (s2.width, s2.height, s2.num_objects) == (40, 30, 0)
    assert s2.boxes.shape == (0, 4) and s2.labels.shape == (0,)

    # Out of bounds clipped, no-area dropped, missing <difficult> is 0.
    np.testing.assert_array_equal(s3.boxes, [[49, 19, 64, 48], [1, 2, 12, 13]])
    np.testing.assert_array_equal(s3.labels, [C["car"], C["cat"]])
    np.testing.assert_array_equal(s3.difficult, [False, False])

    # No <size>: from the image header.
    assert (s4.width, s4.height) == (32, 24)
    np.testing.assert_array_equal(s4.boxes, [[2, 3, 10, 20]])

    # One warning for the whole dataset, with the counts.
    messages = [str(w.message) for w in caught]
    assert messages == ["voc2007_test: 1 boxes clipped to the image, 1 boxes with no area dropped"]


def test_voc07_plus_12_ids_unique_across_years_and_float_coordinates():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to repair in trainval: no warning at all
        ds = read_voc(DEVKIT, split="trainval", years=("2007", "2012"))
    assert ds.name == "voc2007+2012_trainval"
    assert [s.id for s in ds] == ["2007_000001", "2012_2008_000008"]
    plane = ds.samples[1]
    np.testing.assert_allclose(plane.boxes, [[9.5, 5, 45, 30.5]])
    np.testing.assert_array_equal(plane.labels, [C["aeroplane"]])
    assert (plane.width, plane.height) == (50, 40)


def test_single_year_folder_as_root_gives_plain_ids():
    ds = read_voc(DEVKIT / "VOC2007", split="trainval")
    assert [s.id for s in ds] == ["000001"]


@pytest.fixture
def devkit(tmp_path):
    """A writable copy of the fixture devkit (VOC2007 only)."""
    root = tmp_path / "VOCdevkit"
    shutil.copytree(DEVKIT / "VOC2007", root / "VOC2007")
    return root


def test_malformed_xml_names_file_and_line(devkit):
    xml = devkit / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text("<annotation>\n  <filename>000002.jpg</filename>\n  <size><width>40</size>\n</annotation>\n")
    with pytest.raises(ValueError, match=r"000002\.xml:3: malformed XML"):
        read_voc(devkit, split="test")


def test_non_numeric_coordinate_names_file_and_element(devkit):
    xml = devkit / "VOC2007" / "Annotations" / "000004.xml"
    xml.write_text(xml.read_text().replace("<xmax>10</xmax>", "<xmax>ten</xmax>"))
    with pytest.raises(ValueError, match=r"000004\.xml: <bndbox/xmax> is not a number: 'ten'"):
        read_voc(devkit, split="test")


def test_missing_image_is_an_error_or_a_counted_skip(devkit):
    (devkit / "VOC2007" / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000002\.jpg: image file not found"):
        read_voc(devkit, split="test")
    with pytest.warns(UserWarning, match="1 samples with missing images skipped") as caught:
        ds = read_voc(devkit, split="test", skip_missing=True)
    assert len(caught) == 1
    assert [s.id for s in ds] == ["2007_000001", "2007_000003", "2007_000004"]


def test_unknown_class_is_an_error_or_a_counted_skip(devkit):
    xml = devkit / "VOC2007" / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text().replace("<name>dog</name>", "<name>unicorn</name>"))
    with pytest.raises(ValueError, match=r"000001\.xml: object 0 has unknown class 'unicorn'"):
        read_voc(devkit, split="trainval")
    with pytest.warns(UserWarning, match="1 objects of unknown classes skipped"):
        ds = read_voc(devkit, split="trainval", skip_unknown=True)
    np.testing.assert_array_equal(ds[0].labels, [C["person"]])
    np.testing.assert_array_equal(ds[0].difficult, [True])


def test_missing_list_and_annotation_files_are_named(devkit):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val\.txt: VOC image list not found"):
        read_voc(devkit, split="val")
    (devkit / "VOC2007" / "Annotations" / "000003.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"000003\.xml: annotation file not found"):
        read_voc(devkit, split="test")
