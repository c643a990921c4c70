"""scripts/build_toy_assets.py: when a detector run is extended, and which stage ships."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_toy_assets", ROOT / "scripts" / "build_toy_assets.py")
build_toy_assets = importlib.util.module_from_spec(spec)
sys.modules["build_toy_assets"] = build_toy_assets
spec.loader.exec_module(build_toy_assets)


def fake_build(monkeypatch, tmp_path, name, box_maps, mask_ap50s, max_extensions=3):
    """Run build_detector_asset with training replaced by writing stage k's summary (box mAP
    ``box_maps[k]``) and mask AP by ``mask_ap50s[k]``; returns (stages trained, stage shipped)."""
    trained: list[Path] = []

    def train_stage(name, args, stage_dir, plan):
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "summary.json").write_text(json.dumps({"best_map50": box_maps[len(trained)], "steps": 10}))
        (stage_dir / "log.jsonl").write_text(json.dumps({"step": 10, "seconds": 60.0}) + "\n")
        (stage_dir / "best.pt").write_text(str(len(trained)))  # which stage it came from
        trained.append(stage_dir)

    def mask_ap(detector, val_set):
        return mask_ap50s[detector], 0.1

    shipped = []
    monkeypatch.setattr(build_toy_assets, "pretrained_body", lambda name, args: tmp_path / "body.pt")
    monkeypatch.setattr(build_toy_assets, "train_stage", train_stage)
    monkeypatch.setattr(build_toy_assets, "mask_ap", mask_ap)
    monkeypatch.setattr(build_toy_assets, "ship_detector",
                        lambda name, stages, plan, args: shipped.append(
                            max(stages, key=lambda s: build_toy_assets.stage_score(name, s, args))))
    monkeypatch.setattr("icm.detectors.build_detector", lambda name, weights: int(Path(weights).read_text()))
    monkeypatch.setattr("icm.data.load_dataset", lambda *a, **k: None)
    monkeypatch.setattr("icm.detectors.read_detector_checkpoint", lambda path: {"family": "torchvision"})
    args = build_toy_assets.build_parser().parse_args(
        ["--runs", str(tmp_path), "--steps", f"{name}=10", "--max_extensions", str(max_extensions)])
    build_toy_assets.build_detector_asset(name, args, build_toy_assets.Budget(steps={name: 10}, minutes={}))
    return trained, shipped[0]


def test_mask_model_is_extended_until_its_masks_pass_not_its_boxes(monkeypatch, tmp_path):
    # Boxes pass from the first stage; masks pass only at the third: two extensions.
    trained, shipped = fake_build(monkeypatch, tmp_path, "toy_mask_rcnn",
                                  box_maps=[0.48, 0.51, 0.53, 0.55], mask_ap50s=[0.43, 0.46, 0.52, 0.6])
    assert [s.name for s in trained] == ["toy_mask_rcnn", "extend1", "extend2"]
    assert shipped.name == "extend2"
    # The mask AP of each stage is measured once and kept with the stage.
    assert json.loads((trained[1] / "mask_ap.json").read_text())["mask_ap50"] == 0.46


def test_box_detector_stops_extending_once_its_boxes_pass(monkeypatch, tmp_path):
    trained, shipped = fake_build(monkeypatch, tmp_path, "toy_fcos",
                                  box_maps=[0.45, 0.51, 0.6], mask_ap50s=[0.0, 0.0, 0.0])
    assert [s.name for s in trained] == ["toy_fcos", "extend1"]
    assert shipped.name == "extend1"
    assert not (trained[0] / "mask_ap.json").exists()
