import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from icm.io import (
    ImageReadError,
    append_jsonl,
    atomic_path,
    atomic_write_json,
    image_to_tensor,
    list_images,
    read_image,
    read_image_tensor,
    read_json,
    read_jsonl,
    tensor_to_image,
    write_image,
)


def _gradient(w=16, h=8):
    x = np.arange(w * h * 3, dtype=np.uint8).reshape(h, w, 3)
    return Image.fromarray(x, "RGB")


def test_png_round_trip_is_lossless(tmp_path):
    img = _gradient()
    write_image(tmp_path / "a.png", img)
    back = read_image(tmp_path / "a.png")
    assert back.mode == "RGB" and back.size == (16, 8)
    assert np.array_equal(np.asarray(back), np.asarray(img))


def test_tensor_conversion_round_trip():
    img = _gradient()
    t = image_to_tensor(img)
    assert t.shape == (3, 8, 16) and t.dtype == torch.float32
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    assert np.array_equal(np.asarray(tensor_to_image(t)), np.asarray(img))
    with pytest.raises(ValueError):
        tensor_to_image(torch.zeros(1, 3, 4, 4))


def test_exif_orientation_is_applied(tmp_path):
    # 4x2 image stored landscape with orientation 6 (rotate 90 CW to display) -> 2x4 portrait.
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[0, 0] = 255  # top-left red pixel
    img = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "o.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "o.jpg")
    assert out.size == (2, 4)
    # after a 90-degree clockwise turn the marked corner is at the top-right
    assert np.asarray(out)[0, 1, 0] > 200


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    src = _gradient().convert("RGBA" if mode in ("LA", "RGBA") else "RGB")
    if mode == "I;16":
        arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
        src = Image.fromarray(arr)
        assert src.mode == "I;16"
        path = tmp_path / "x.png"
    else:
        src = src.convert(mode)
        path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    src.save(path)
    out = read_image(path)
    assert out.mode == "RGB"
    if mode == "I;16":
        a = np.asarray(out)[..., 0].astype(int)
        assert a[0, 0] == 0 and a.max() == round(63000 / 257)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    out = read_image(tmp_path / "p.png")
    assert out.mode == "RGB"


def test_missing_truncated_and_foreign_files_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="nope.png: image file not found"):
        read_image(tmp_path / "nope.png")
    _gradient(64, 64).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.jpg: cannot read image"):
        read_image(tmp_path / "t.jpg")
    (tmp_path / "f.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="f.png"):
        read_image(tmp_path / "f.png")


def test_pixel_limit_guards_against_bombs(tmp_path):
    _gradient(40, 30).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="exceeds the limit of 1000"):
        read_image(tmp_path / "big.png", max_pixels=1000)
    assert read_image_tensor(tmp_path / "big.png", max_pixels=1200).shape == (3, 30, 40)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_atomic_writes_get_umask_permissions_and_dead_writers_leftovers_are_removed(tmp_path):
    import subprocess
    import sys

    from icm import io as icm_io

    atomic_write_json(tmp_path / "a.json", {"a": 1})
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / "sub").mkdir()
    host = icm_io._WRITER.rsplit("-", 1)[0]
    stale = tmp_path / "sub" / f".last.pth.tar.{host}-{dead_pid}.abc123.tmp"
    live = tmp_path / f".last.pth.tar.{host}-{os.getpid()}.def456.tmp"  # a writer still at work
    other_host = tmp_path / f".last.pth.tar.elsewhere-{dead_pid}.gh789.tmp"  # a shard on another machine
    for path in (stale, live, other_host):
        path.write_bytes(b"x")
    assert icm_io.remove_stale_temp_files(tmp_path) == 1
    assert not stale.exists() and live.exists() and other_host.exists()
    with icm_io.atomic_path(tmp_path / "x.bin") as tmp:
        assert f".{icm_io._WRITER}." in tmp.name


def test_jsonl_ignores_torn_last_line_but_not_corrupt_middle(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"id": "a"})
    append_jsonl(path, {"id": "b"})
    with open(path, "a") as f:
        f.write('{"id": "c"')  # crash mid-append
    with pytest.warns(UserWarning, match="1 torn line"):
        assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    # the next append starts on a fresh line: nothing after the crash is lost
    append_jsonl(path, {"id": "d"})
    append_jsonl(path, {"id": "e"})
    with pytest.warns(UserWarning, match="1 torn line"):
        assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "d", "e"]
    path.write_text('{"id": "a"}\n{oops\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="m.jsonl:2"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_read_json_errors_name_file_and_position(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(ValueError, match=r"x.json:2:\d+: malformed JSON"):
        read_json(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="y.json"):
        read_json(tmp_path / "y.json")


def test_list_images_recursive_sorted_skips_hidden(tmp_path):
    for rel in ["b.png", "a/c.jpg", ".hidden/d.png", "a/.e.png", "notes.txt"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a/c.jpg", "b.png"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")


def test_foreign_file_is_an_image_error_even_after_ultralytics_import(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_AUTOINSTALL", "false")
    import ultralytics  # noqa: F401 - its import patches PIL.Image.open

    (tmp_path / "f.png").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ImageReadError, match="f.png: cannot read image"):
        read_image(tmp_path / "f.png")
