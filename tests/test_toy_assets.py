"""The shipped toy assets (assets/toy, built by scripts/build_toy_assets.py): every checkpoint
loads with ``weights_only=True`` through the code the CLIs use, and its card tells the truth."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from icm.config import REPO_ROOT
from icm.data.toy import TOY_CLASSES

# ICM_TOY_ASSETS checks a build made elsewhere (build_toy_assets.py --assets DIR).
ASSET_DIR = Path(os.environ.get("ICM_TOY_ASSETS", REPO_ROOT / "assets" / "toy"))
DETECTOR_ASSETS = sorted(ASSET_DIR.glob("toy_*.pt"))
CODEC_ASSETS = sorted(ASSET_DIR.glob("codec_q*.pth.tar"))
NO_ASSETS = "no toy assets built yet (python scripts/build_toy_assets.py)"


def params(paths: list[Path]) -> list:
    """One test per asset, or one skipped test when there is none."""
    if not paths:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_ASSETS))]
    return [pytest.param(p, id=p.name) for p in paths]


def read_card(asset: Path, stem: str) -> dict:
    card_path = asset.with_name(f"{stem}.json")
    assert card_path.is_file(), f"{asset.name} has no card {card_path.name}"
    return json.loads(card_path.read_text())


@pytest.mark.parametrize("asset", params(DETECTOR_ASSETS))
def test_detector_asset_loads_and_matches_its_card(asset: Path) -> None:
    from icm.detectors import build_detector, read_detector_checkpoint

    name = asset.stem
    card = read_card(asset, name)
    checkpoint = read_detector_checkpoint(asset)  # torch.load(weights_only=True)
    assert checkpoint is not None and checkpoint["name"] == name == card["name"]
    detector = build_detector(name, weights=str(asset))  # what every CLI's --weights NAME=PATH does
    assert list(detector.classes) == TOY_CLASSES == card["classes"]
    assert card["val_map50"] >= 0.5, f"{name}: card reports mAP@0.5 {card['val_map50']}"
    if card["role"] == "unseen task":  # the instance-segmentation model: its masks must be good too
        assert card["val_mask_ap50"] >= 0.5, f"{name}: card reports mask AP@0.5 {card['val_mask_ap50']}"
    assert card["parameters"] == sum(p.numel() for p in detector.parameters())
    assert card["file_size_bytes"] == asset.stat().st_size
    assert card["steps"] > 0 and card["git_commit"]
    stored = {k: v for k, v in checkpoint["state_dict"].items() if v.is_floating_point()}
    assert stored and all(v.dtype == torch.float16 for v in stored.values())


@pytest.mark.parametrize("asset", params(CODEC_ASSETS))
def test_codec_asset_loads_and_codes(asset: Path) -> None:
    from icm.codec import compress_image, decompress_image, lambda_for, load_codec, real_bpp

    name = asset.name.removesuffix(".pth.tar")
    card = read_card(asset, name)
    model, checkpoint = load_codec(asset)  # weights_only=True, fresh CDFs
    assert checkpoint["arch"]["backbone"] == "bmshj2018-hyperprior" == card["architecture"]["backbone"]
    assert card["quality"] == checkpoint["arch"]["quality"] == int(name.removeprefix("codec_q"))
    assert card["lambda"] == lambda_for(card["quality"], "mse")
    assert math.isfinite(card["val_bpp"]) and card["val_bpp"] > 0
    assert math.isfinite(card["val_psnr"]) and card["val_psnr"] > 15
    assert card["file_size_bytes"] == asset.stat().st_size
    # A real bitstream round trip of a smooth 64x64 image.
    ramp = torch.linspace(0, 1, 64)
    x = torch.stack([ramp.expand(64, 64), ramp.expand(64, 64).T, 0.5 * torch.ones(64, 64)]).unsqueeze(0)
    compressed = compress_image(model, x)
    x_hat = decompress_image(model, compressed)
    assert x_hat.shape == x.shape and 0 < real_bpp(compressed) < 8
    assert (x_hat - x).abs().mean() < 0.1


def test_codec_cards_rate_grows_with_quality() -> None:
    if len(CODEC_ASSETS) < 2:
        pytest.skip("fewer than two toy codec qualities built")
    cards = sorted((read_card(p, p.name.removesuffix(".pth.tar")) for p in CODEC_ASSETS), key=lambda c: c["quality"])
    bpps, psnrs = [c["val_bpp"] for c in cards], [c["val_psnr"] for c in cards]
    assert bpps == sorted(bpps) and psnrs == sorted(psnrs), f"bpp {bpps}, PSNR {psnrs} by quality"


def test_assets_stay_small() -> None:
    if not ASSET_DIR.is_dir():
        pytest.skip(NO_ASSETS)
    sizes = {p.name: p.stat().st_size for p in ASSET_DIR.iterdir()}
    assert sum(sizes.values()) < 60e6, f"assets/toy holds {sum(sizes.values()) / 1e6:.1f} MB (limit 60 MB)"
    assert max(sizes.values()) < 10e6, f"{max(sizes, key=sizes.get)} is over 10 MB"


def test_detectors_are_made_the_way_zoo_detectors_are() -> None:
    """Each body pretrained upstream (the toy classification task), photometric augmentation,
    and no unseen detector shares a backbone family with a seen one."""
    cards = {p.stem: read_card(p, p.stem) for p in DETECTOR_ASSETS}
    if not cards:
        pytest.skip(NO_ASSETS)
    families = {role: {c["backbone_family"] for c in cards.values() if c["role"] == role} for role in ("seen", "unseen")}
    assert families["seen"] and families["unseen"] and not families["seen"] & families["unseen"]
    for name, card in cards.items():
        assert card["recipe"]["augment"] and card["settings"]["augment"], name
        assert card["recipe"]["init_backbone"] and card["init_backbone"]["task"].startswith("toy classification"), name
        assert card["init_backbone"]["held_out_accuracy"]["shape"] > 1 / len(TOY_CLASSES), name


def test_toy_config_uses_only_shipped_assets_and_the_planned_model_sets() -> None:
    import re

    from icm.config import load_yaml

    config_path = REPO_ROOT / "configs" / "toy.yaml"
    text = config_path.read_text()
    referenced = sorted(set(re.findall(r"assets/toy/[\w.]+", text)))
    assert referenced, "configs/toy.yaml references no shipped asset"
    if ASSET_DIR == REPO_ROOT / "assets" / "toy":
        missing = [p for p in referenced if not (REPO_ROOT / p).is_file()]
        assert not missing, f"configs/toy.yaml references assets that are not shipped: {missing}"
    config = load_yaml(config_path)
    seen = config["evaluation"]["seen_detectors"]
    unseen = config["evaluation"]["unseen_detectors"]
    # Stage one attacks exactly the seen set: a YOLOv3-, a Faster R-CNN- and a CenterNet-family model.
    assert config["meta_aafg"]["models"].split(",") == seen == ["toy_yolov3", "toy_faster_rcnn", "toy_centernet"]
    # Unseen: a YOLOv8-family model and at least two other families, none of them seen.
    assert "toy_yolov8" in unseen and len(unseen) >= 3 and not set(unseen) & set(seen)
    task = config["evaluation"].get("task_detectors", [])
    assert set(config["evaluation"]["weights"]) == set(seen) | set(unseen) | set(task)
    assert not set(task) & (set(seen) | set(unseen))  # the unseen task's models: in no detection mean
