"""icm.data.folder and the header-only image size of icm.data.common."""

import io

import numpy as np
import pytest
from PIL import Image

from icm.data.common import image_size
from icm.data.folder import read_image_folder
from icm.io import ImageReadError, read_image


def _save(path, size, fmt="PNG", **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path, format=fmt, **kwargs)


def test_recursive_ids_with_slashes_and_header_sizes(tmp_path):
    _save(tmp_path / "b.png", (20, 10))
    _save(tmp_path / "sub" / "deeper" / "a.jpg", (16, 12), fmt="JPEG")
    _save(tmp_path / ".hidden" / "c.png", (8, 8))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = read_image_folder(tmp_path, name="mine")
    assert ds.name == "mine" and ds.classes == []
    assert [s.id for s in ds] == ["b", "sub/deeper/a"]
    assert [(s.width, s.height) for s in ds] == [(20, 10), (16, 12)]
    assert all(s.num_objects == 0 and s.boxes.shape == (0, 4) for s in ds)
    assert ds[1].image_path == tmp_path / "sub" / "deeper" / "a.jpg"


def test_same_id_twice_and_empty_folder_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images found"):
        read_image_folder(tmp_path)
    _save(tmp_path / "x.png", (8, 8))
    _save(tmp_path / "x.jpg", (8, 8), fmt="JPEG")
    with pytest.raises(ValueError, match="same id 'x'"):
        read_image_folder(tmp_path)


def test_image_size_applies_exif_orientation_like_read_image(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (30, 20)).save(path, format="JPEG", exif=exif.tobytes())
    assert image_size(path) == (20, 30)
    assert read_image(path).size == (20, 30)


def test_image_size_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match=r"missing\.png: image file not found"):
        image_size(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match=r"bad\.png: cannot read image header"):
        image_size(bad)


def test_image_size_does_not_decode_pixels(tmp_path):
    # A truncated PNG still has a valid header: the size is known without decoding.
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert image_size(path) == (50, 40)
    with pytest.raises(ImageReadError):
        read_image(path)
