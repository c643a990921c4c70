"""load_dataset(..., shard=(I, N)): each process gets samples I, I + N, ... of the full list,
and the VOC, COCO and Open Images readers parse only those images' annotations."""

import shutil
import warnings
from pathlib import Path

import pytest

from icm.aafg.engine import shard_samples
from icm.data import load_dataset
from icm.data.coco import read_coco
from icm.data.oid import read_oid
from icm.data.voc import read_voc

FIXTURES = Path(__file__).parent / "fixtures"


def ids(dataset):
    return [s.id for s in dataset.samples]


def test_every_reader_selects_the_static_shards_of_the_full_list(tmp_path):
    warnings.simplefilter("ignore")
    readers = {
        "voc": lambda **kw: read_voc(FIXTURES / "VOCdevkit", split="trainval", years=("2007", "2012"), **kw),
        "coco": lambda **kw: read_coco(FIXTURES / "coco" / "instances.json", FIXTURES / "coco" / "images", **kw),
        "oid": lambda **kw: read_oid(FIXTURES / "oid" / "boxes.csv", FIXTURES / "oid" / "class-descriptions.csv",
                                     FIXTURES / "oid" / "images", **kw),
    }
    for name, read in readers.items():
        full = ids(read())
        assert len(full) >= 2, name
        for count in (2, 3):
            parts = [ids(read(select=lambda p, i=i, c=count: p % c == i)) for i in range(count)]
            assert parts == [[s for s in shard_samples(full, i, count)] for i in range(count)], name


def test_a_shard_never_parses_another_shards_annotation(tmp_path):
    root = tmp_path / "VOCdevkit"
    shutil.copytree(FIXTURES / "VOCdevkit" / "VOC2007", root / "VOC2007")
    listed = (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert len(listed) >= 2
    (root / "VOC2007" / "Annotations" / f"{listed[1]}.xml").write_text("<annotation>broken")
    warnings.simplefilter("ignore")
    mine = load_dataset("voc", split="val", root=root, shard=(0, 2))
    assert ids(mine) == [f"2007_{i}" for i in listed[0::2]]
    with pytest.raises(ValueError, match=rf"{listed[1]}\.xml:1: malformed XML"):
        load_dataset("voc", split="val", root=root, shard=(1, 2))
    limited = load_dataset("voc", split="val", root=root, shard=(0, 2), limit=1)
    assert ids(limited) == [f"2007_{listed[0]}"]
    with pytest.raises(ValueError, match="need 0 <= I < N"):
        load_dataset("voc", split="val", root=root, shard=(2, 2))


def test_toy_and_folder_sets_are_sharded_after_reading(tmp_path):
    from icm.data import make_toy_dataset

    toy = make_toy_dataset(tmp_path / "toy", train=5, val=1, size=32)
    full = ids(load_dataset("toy", split="train", root=toy))
    assert ids(load_dataset("toy", split="train", root=toy, shard=(1, 2))) == full[1::2]
    folder = toy / "JPEGImages" if (toy / "JPEGImages").is_dir() else toy
    whole = ids(load_dataset(str(folder)))
    assert ids(load_dataset(str(folder), shard=(0, 3))) == whole[0::3]


def test_repeated_open_images_ids_are_read_once_in_any_shard():
    warnings.simplefilter("ignore")
    read = lambda **kw: read_oid(FIXTURES / "oid" / "boxes.csv", FIXTURES / "oid" / "class-descriptions.csv",  # noqa: E731
                                 FIXTURES / "oid" / "images", **kw)
    listed = ids(read())
    repeated = listed + listed[:1]  # e.g. a box CSV's ImageID column given as the id list
    full = ids(read(image_ids=repeated))
    parts = [ids(read(image_ids=repeated, select=lambda p, i=i: p % 2 == i)) for i in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(full) == sorted(listed)
