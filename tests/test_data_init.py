"""icm.data: load_dataset (named configs, YAML paths, folders, roots), the torch Dataset
and the collate function."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

import icm.data
from icm.config import CONFIG_DIR, ConfigError
from icm.data import (
    COCO_CLASSES,
    TOY_CLASSES,
    VOC_CLASSES,
    DetectionImageDataset,
    collate_detection,
    load_dataset,
    make_toy_dataset,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", train=6, val=3, size=48, seed=0)


def test_public_api_is_exported():
    for name in ("DetectionSample", "DetectionDataset", "read_voc", "read_coco", "read_oid",
                 "read_image_folder", "load_dataset", "DetectionImageDataset", "collate_detection",
                 "make_toy_dataset", "TOY_CLASSES", "VOC_CLASSES", "COCO_CLASSES"):
        assert name in icm.data.__all__ and hasattr(icm.data, name)
    assert len(VOC_CLASSES) == 20 and len(COCO_CLASSES) == 80 and len(TOY_CLASSES) == 6


def test_every_shipped_dataset_config_is_valid():
    for name in ("voc", "coco", "oid", "toy"):
        config = yaml.safe_load((CONFIG_DIR / "datasets" / f"{name}.yaml").read_text())
        assert config["format"] in icm.data.READERS
        assert "val" in config["splits"] and "train" in config["splits"]


def test_named_toy_generates_on_first_use_under_icm_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_DATA_ROOT", str(tmp_path))
    # Keep it small: the config's generate options, shrunk.
    config = yaml.safe_load((CONFIG_DIR / "datasets" / "toy.yaml").read_text())
    config["generate"] = {"train": 3, "val": 2, "size": 32, "seed": 5}
    small = tmp_path / "toy_small.yaml"
    small.write_text(yaml.safe_dump(config))
    ds = load_dataset(small, split="val")
    assert (tmp_path / "toy" / "toy.json").is_file()  # root "toy" is under $ICM_DATA_ROOT
    assert ds.name == "toy_val" and len(ds) == 2 and ds.classes == TOY_CLASSES
    assert len(load_dataset(small, split="train")) == 3


def test_named_toy_with_explicit_root(toy_root):
    ds = load_dataset("toy", split="train", root=toy_root)
    assert len(ds) == 6 and ds[0].id == "train_00000"
    with pytest.raises(ConfigError, match="no split 'test'"):
        load_dataset("toy", split="test", root=toy_root)


def test_named_voc_and_coco_with_root_and_overrides(tmp_path):
    with pytest.warns(UserWarning, match="voc2007_test"):
        voc = load_dataset("voc", split="val", root=FIXTURES / "VOCdevkit")
    assert [s.id for s in voc][:2] == ["2007_000001", "2007_000002"]
    trainval = load_dataset("voc", split="train", root=FIXTURES / "VOCdevkit")
    assert [s.id for s in trainval] == ["2007_000001", "2012_2008_000008"]
    only07 = load_dataset("VOC".lower(), split="train", root=FIXTURES / "VOCdevkit", years=["2007"])
    assert [s.id for s in only07] == ["2007_000001"]
    with pytest.raises(ConfigError, match=r"options \['colour'\] are not accepted by the voc reader"):
        load_dataset("voc", root=FIXTURES / "VOCdevkit", colour="red")

    # COCO with the config's relative file names under a root laid out like data/coco.
    coco_root = tmp_path / "coco"
    shutil.copytree(FIXTURES / "coco" / "images", coco_root / "val2017")
    (coco_root / "annotations").mkdir()
    shutil.copy(FIXTURES / "coco" / "instances.json", coco_root / "annotations" / "instances_val2017.json")
    with pytest.warns(UserWarning):
        coco = load_dataset("coco", split="val", root=coco_root)
    assert coco.classes == ["person", "car", "dog"] and len(coco) == 3


def test_a_data_root_is_read_by_its_layout_whatever_the_name_says(tmp_path, toy_root):
    coco_root = tmp_path / "coco"
    shutil.copytree(FIXTURES / "coco" / "images", coco_root / "val2017")
    (coco_root / "annotations").mkdir()
    shutil.copy(FIXTURES / "coco" / "instances.json", coco_root / "annotations" / "instances_val2017.json")
    assert [icm.data.detect_layout(p) for p in (toy_root, FIXTURES / "VOCdevkit", coco_root, FIXTURES / "oid", tmp_path / "no")] \
        == ["toy", "voc", "coco", "oid", None]
    # --dataset toy would otherwise try to generate a toy set into the COCO folder.
    with pytest.warns(UserWarning, match="has the layout of a coco set: read as --dataset coco, not toy"):
        coco = load_dataset("toy", split="val", root=coco_root)
    assert coco.classes == ["person", "car", "dog"] and len(coco) == 3
    assert not (coco_root / "toy.json").exists()
    with pytest.warns(UserWarning, match="layout of a toy set"):
        toy = load_dataset("voc", split="train", root=toy_root)
    assert len(toy) == 6 and toy[0].id == "train_00000"
    with pytest.warns(UserWarning, match="layout of a voc set"), pytest.raises(ConfigError, match="no split 'nope'"):
        load_dataset("coco", split="nope", root=FIXTURES / "VOCdevkit")


def test_yaml_path_for_an_oid_layout(tmp_path):
    config = {
        "format": "oid",
        "root": str(FIXTURES / "oid"),
        "splits": {"val": {"box_csv": "boxes.csv", "class_csv": "class-descriptions.csv", "image_dir": "images"}},
    }
    path = tmp_path / "my_oid.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.warns(UserWarning, match="1 boxes with no area dropped"):
        ds = load_dataset(path)
    assert len(ds) == 3 and ds.class_ids[0] == "/m/0bt9lr"
    with pytest.warns(UserWarning, match="1 boxes with no area dropped"):
        ds = load_dataset(path, classes=["Car"], image_ids=["a1b2c3d4e5f60003"])
    np.testing.assert_array_equal(ds[0].boxes, [[8, 12, 24, 24]])


def test_plain_folder_path(toy_root):
    ds = load_dataset(toy_root / "JPEGImages")
    assert len(ds) == 12 and ds[0].id == "train_00000" and ds.classes == []  # train, val, val_shifted


def test_missing_real_data_is_one_line_naming_the_place(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_DATA_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("voc")
    message = str(info.value)
    assert "\n" not in message
    assert f"{tmp_path / 'VOCdevkit'} is missing" in message and "--data_root" in message
    (tmp_path / "coco").mkdir()
    with pytest.raises(FileNotFoundError, match=r"instances_val2017\.json is missing"):
        load_dataset("coco")
    with pytest.raises(ConfigError, match="no config named 'nonexistent'"):
        load_dataset("nonexistent")


def test_torch_dataset_targets_and_collate(toy_root):
    dataset = load_dataset("toy", split="val", root=toy_root)
    torch_ds = DetectionImageDataset(dataset)
    assert len(torch_ds) == 3
    image, target = torch_ds[1]
    sample = dataset[1]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.01
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (sample.num_objects, 4)
    np.testing.assert_array_equal(target["boxes"].numpy(), sample.boxes)
    assert target["labels"].dtype == torch.int64
    np.testing.assert_array_equal(target["labels"].numpy(), sample.labels)
    for flag in ("difficult", "iscrowd", "group"):
        assert target[flag].dtype == torch.bool and target[flag].shape == (sample.num_objects,)
    assert target["id"] == "val_00001" and target["size"] == (48, 48)

    loader = DataLoader(torch_ds, batch_size=2, collate_fn=collate_detection)
    images, targets = next(iter(loader))
    assert len(images) == 2 and len(targets) == 2 and [t["id"] for t in targets] == ["val_00000", "val_00001"]
    assert torch.equal(images[1], image)


def test_torch_dataset_transform_and_size_mismatch():
    with pytest.warns(UserWarning):
        voc = load_dataset("voc", split="val", root=FIXTURES / "VOCdevkit")

    def hflip(image, target):
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = image.shape[2] - target["boxes"][:, [2, 0]]
        return image.flip(-1), {**target, "boxes": boxes}

    image, target = DetectionImageDataset(voc, transform=hflip)[0]
    assert image.shape == (3, 48, 64)
    np.testing.assert_array_equal(target["boxes"].numpy(), [[34, 9, 60, 40], [0, 0, 64, 48]])
    np.testing.assert_array_equal(target["difficult"].numpy(), [False, True])

    voc.samples[0].width = 65
    with pytest.raises(ValueError, match=r"000001\.jpg: image is 64x48 but its annotation says 65x48"):
        DetectionImageDataset(voc)[0]


def test_config_names_any_case_and_limit(tmp_path, monkeypatch):
    from icm.data import load_dataset

    monkeypatch.setenv("ICM_DATA_ROOT", str(tmp_path))
    from icm.data import make_toy_dataset

    make_toy_dataset(tmp_path / "toy", train=5, val=2, size=32, seed=1)
    full = load_dataset("TOY", split="train", root=tmp_path / "toy")
    three = load_dataset("toy", split="train", root=tmp_path / "toy", limit=3)
    assert len(full) == 5 and len(three) == 3
    assert [s.id for s in three.samples] == [s.id for s in full.samples[:3]]
    assert three.classes == full.classes


def test_link_split_images_makes_a_plain_folder_of_one_split(tmp_path):
    from icm.data import link_split_images, load_dataset, make_toy_dataset, read_image_folder

    toy = make_toy_dataset(tmp_path / "toy", train=3, val=2, size=64)
    folder = link_split_images("toy", "val", tmp_path / "links", root=toy)
    val = load_dataset("toy", split="val", root=toy).samples
    assert sorted(p.name for p in folder.iterdir()) == sorted(Path(s.image_path).name for s in val)
    assert all(p.is_symlink() and p.resolve().is_file() for p in folder.iterdir())
    assert len(read_image_folder(folder).samples) == 2
    (folder / "stray.png").symlink_to(Path(val[0].image_path).resolve())  # not this split's set
    link_split_images("toy", "val", folder, root=toy)
    assert len(list(folder.iterdir())) == 2
