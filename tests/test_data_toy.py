"""icm.data.toy and scripts/make_toy_dataset.py: determinism, exact read-back, atomicity."""

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icm.data.toy import (
    MAX_OCCLUDED,
    TOY_CLASSES,
    is_toy_dataset,
    make_toy_dataset,
    read_toy,
    render_toy_image,
)
from icm.io import read_image

REPO = Path(__file__).resolve().parent.parent


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small_toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", train=8, val=4, size=64, seed=3)


def test_same_seed_same_bytes_other_seed_other_bytes(small_toy, tmp_path):
    again = make_toy_dataset(tmp_path / "again", train=8, val=4, size=64, seed=3)
    assert _tree_hash(again) == _tree_hash(small_toy)
    other = make_toy_dataset(tmp_path / "other", train=8, val=4, size=64, seed=4)
    assert _tree_hash(other) != _tree_hash(small_toy)


def test_val_split_does_not_depend_on_train_size(small_toy, tmp_path):
    fewer = make_toy_dataset(tmp_path / "fewer", train=2, val=4, size=64, seed=3)
    for i in range(4):
        name = f"JPEGImages/val_{i:05d}.png"
        assert (fewer / name).read_bytes() == (small_toy / name).read_bytes()


def test_reader_reads_back_exactly_what_was_drawn(small_toy):
    drawn = json.loads((small_toy / "objects.json").read_text())
    assert len(drawn) == 12
    for split, count in (("train", 8), ("val", 4)):
        ds = read_toy(small_toy, split)
        assert ds.name == f"toy_{split}" and ds.classes == TOY_CLASSES
        assert [s.id for s in ds] == [f"{split}_{i:05d}" for i in range(count)]
        for sample in ds:
            objects = drawn[sample.id]
            assert 1 <= len(objects) <= 4
            assert (sample.width, sample.height) == (64, 64)
            np.testing.assert_array_equal(sample.boxes, [o["box"] for o in objects])
            np.testing.assert_array_equal(sample.labels, [TOY_CLASSES.index(o["name"]) for o in objects])
            assert not sample.difficult.any()
            assert all(o["visible"] >= 1 - MAX_OCCLUDED for o in objects)
            image = read_image(sample.image_path)
            assert image.size == (64, 64) and sample.image_path.suffix == ".png"


def test_marker_records_parameters_and_rerun_reuses_the_set(small_toy):
    params = json.loads((small_toy / "toy.json").read_text())
    assert {k: params[k] for k in ("train", "val", "size", "seed")} == {"train": 8, "val": 4, "size": 64, "seed": 3}
    mtime = (small_toy / "toy.json").stat().st_mtime_ns
    assert make_toy_dataset(small_toy, train=8, val=4, size=64, seed=3) == small_toy
    assert (small_toy / "toy.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="holds a toy set made with"):
        make_toy_dataset(small_toy, train=9, val=4, size=64, seed=3)


def test_boxes_are_tight_and_cover_every_drawn_pixel(monkeypatch):
    import icm.data.toy as toy

    # On a flat grey background without pixel noise, the drawn pixels are exactly the
    # pixels that are not grey: each box must touch them on all four edges and the boxes
    # together must cover all of them.
    monkeypatch.setattr(toy, "_background", lambda rng, size: np.full((size, size, 3), 128, np.float32))
    noiseless = dataclasses.replace(toy.BASE, pixel_noise=0.0)
    n_objects = 0
    for seed in range(10):
        pixels, objects = render_toy_image(np.random.default_rng(seed), 96, domain=noiseless)
        drawn = (pixels != 128).any(axis=2)
        covered = np.zeros_like(drawn)
        for obj in objects:
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
            inside = drawn[y1:y2, x1:x2]
            assert inside[:, 0].any() and inside[:, -1].any() and inside[0].any() and inside[-1].any()
            covered[y1:y2, x1:x2] = True
        assert not (drawn & ~covered).any()
        n_objects += len(objects)
    assert n_objects > 10


@pytest.mark.parametrize(
    "kind, area_fraction",  # analytic area / area of the circumscribed circle
    [("circle", 1.0), ("square", 2 / np.pi), ("triangle", 3 * np.sqrt(3) / (4 * np.pi)),
     ("cross", (8 * 0.33 - 4 * 0.33**2) / (1 + 0.33**2) / np.pi), ("ring", 1 - 0.55**2),
     ("star", 5 * 0.45 * np.sin(np.pi / 5) / np.pi)],
)
def test_shape_masks_have_their_shape_area(kind, area_fraction):
    from icm.data.toy import _shape_mask

    radius = 20.0
    mask = _shape_mask(kind, 40.3, 38.7, radius, 0.4, 80)
    assert mask.dtype == bool
    assert mask.sum() / (np.pi * radius**2) == pytest.approx(area_fraction, rel=0.12)
    rows, cols = np.nonzero(mask)
    assert cols.min() >= 40.3 - radius - 1 and cols.max() <= 40.3 + radius + 1
    assert rows.min() >= 38.7 - radius - 1 and rows.max() <= 38.7 + radius + 1


def test_bad_parameters_and_non_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="at least 32 px"):
        make_toy_dataset(tmp_path / "a", train=1, val=1, size=16)
    with pytest.raises(ValueError, match="at least one"):
        make_toy_dataset(tmp_path / "a", train=0, val=0)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "stray.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a complete toy set"):
        make_toy_dataset(tmp_path / "b", train=1, val=1, size=32)
    with pytest.raises(FileNotFoundError, match="no complete toy set"):
        read_toy(tmp_path / "b")


def test_crash_leaves_no_half_set(tmp_path, monkeypatch):
    import icm.data.toy as toy

    calls = {"n": 0}
    real_render = toy.render_toy_image

    def crash_on_third(rng, size, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real_render(rng, size, **kwargs)

    monkeypatch.setattr(toy, "render_toy_image", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_toy_dataset(tmp_path / "toy", train=4, val=1, size=32)
    assert not (tmp_path / "toy").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too
    monkeypatch.setattr(toy, "render_toy_image", real_render)
    out = make_toy_dataset(tmp_path / "toy", train=4, val=1, size=32)
    assert is_toy_dataset(out) and len(read_toy(out, "train")) == 4


def test_cli_writes_a_set_and_help_shows_defaults(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_toy_dataset as cli
    finally:
        sys.path.pop(0)
    assert cli.main(["--out", str(tmp_path / "cli"), "--train", "3", "--val", "2", "--size", "32", "--seed", "1"]) == 0
    assert "5 images" in capsys.readouterr().out
    assert len(read_toy(tmp_path / "cli", "val")) == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out", str(tmp_path / "bad"), "--size", "8"])
    assert exit_info.value.code == 2
    assert "error: image size must be at least 32 px" in capsys.readouterr().err
    help_text = cli.build_parser().format_help()
    for default in ("(default: 2000)", "(default: 300)", "(default: 128)", "(default: 0)"):
        assert default in help_text


@pytest.mark.slow  # a fresh interpreter importing torch: 4 to 10 s on a busy machine
def test_script_runs_standalone(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_toy_dataset.py"), "--out", str(tmp_path / "t"),
         "--train", "1", "--val", "1", "--size", "32"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "t" / "JPEGImages" / "train_00000.png").size == (32, 32)


def test_masks_file_holds_each_visible_shape_inside_its_box(small_toy):
    from pycocotools import mask as mask_utils

    objects = {**json.loads((small_toy / "objects.json").read_text()),
               **json.loads((small_toy / "objects_val_shifted.json").read_text())}
    for split, count in (("train", 8), ("val", 4), ("val_shifted", 4)):
        data = json.loads((small_toy / f"instances_{split}.json").read_text())
        assert [c["name"] for c in data["categories"]] == TOY_CLASSES
        assert [img["file_name"] for img in data["images"]] == [f"{split}_{i:05d}.png" for i in range(count)]
        by_image = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for i in range(count):
            drawn, anns = objects[f"{split}_{i:05d}"], by_image.get(i + 1, [])
            assert [TOY_CLASSES[a["category_id"] - 1] for a in anns] == [o["name"] for o in drawn]
            union = np.zeros((64, 64), bool)
            for obj, ann in zip(drawn, anns):
                mask = mask_utils.decode(ann["segmentation"]).astype(bool)
                x1, y1, x2, y2 = obj["box"]
                assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1] and ann["area"] == mask.sum() > 0
                inside = np.zeros_like(mask)
                inside[y1:y2, x1:x2] = True
                assert not (mask & ~inside).any()  # inside its box
                assert not (mask & union).any()  # visible parts never overlap
                union |= mask
                if obj["visible"] == 1.0:  # an uncovered shape's mask spans its whole box
                    rows, cols = np.nonzero(mask)
                    assert [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == obj["box"]


def test_a_set_made_without_masks_is_completed_with_only_files_added(small_toy, tmp_path):
    import shutil

    from icm.data import load_dataset
    from icm.data.toy import complete_toy_set

    old = tmp_path / "old"
    shutil.copytree(small_toy, old)
    added = [f"instances_{split}.json" for split in ("train", "val", "val_shifted")] + ["objects_val_shifted.json"]
    added += [f"{sub}/val_shifted_{i:05d}.{ext}" for sub, ext in (("JPEGImages", "png"), ("Annotations", "xml"))
              for i in range(4)] + ["ImageSets/Main/val_shifted.txt"]
    for name in added:  # a set as the generator made it before masks and val_shifted
        (old / name).unlink()
    before = _tree_hash(old)
    dataset = load_dataset("toy", split="val", root=old)  # completes the set on first use
    assert dataset.mask_file == old / "instances_val.json"
    for name in added:
        assert (old / name).read_bytes() == (small_toy / name).read_bytes(), name
        (old / name).unlink()
    assert _tree_hash(old) == before  # every other file kept its bytes
    pixels = np.asarray(Image.open(old / "JPEGImages" / "val_00002.png")).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(old / "JPEGImages" / "val_00002.png")
    with pytest.raises(ValueError, match="val_00002.png: differs from what this generator draws"):
        complete_toy_set(old)
    assert not (old / "instances_val.json").exists()


def test_the_shifted_split_is_another_domain_of_the_same_classes(small_toy):
    from icm.data.toy import BASE, SHIFTED

    shifted = read_toy(small_toy, "val_shifted")
    assert [s.id for s in shifted] == [f"val_shifted_{i:05d}" for i in range(4)]
    assert shifted.classes == TOY_CLASSES and all(len(s.boxes) >= 1 for s in shifted)
    # Same generator state, other domain: other backgrounds (textures with more fine detail),
    # a muted palette and less spread overall.
    stats = {}
    for domain in (BASE, SHIFTED):
        images = [render_toy_image(np.random.default_rng([5, i]), 64, domain=domain)[0].astype(float) for i in range(30)]
        stats[domain.name] = (np.mean([np.abs(np.diff(x, axis=1)).mean() for x in images]),
                              np.mean([x.std() for x in images]))
    assert stats["shifted"][0] > 1.3 * stats["base"][0] and stats["shifted"][1] < 0.9 * stats["base"][1]
    from icm.data import load_dataset

    assert [s.id for s in load_dataset("toy", split="val_shifted", root=small_toy)] == [s.id for s in shifted]
