"""scripts/train_detector.py and icm.detectors.training: end to end on tiny toy data, resume,
schedule and augmentation; slow overfit checks per detector family."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from icm.data import TOY_CLASSES, load_dataset, make_toy_dataset
from icm.detectors import build_detector, load_detector
from icm.detectors.training import (
    TrainSettings,
    epoch_batches,
    hflip,
    make_optimizer,
    train_detector,
)
from icm.io import read_jsonl

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "train_detector.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_detector_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toy8(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("data") / "toy8", train=8, val=2, size=64, seed=3)


def test_main_trains_checkpoints_logs_and_resumes(toy8, tmp_path):
    main = _script().main
    out = tmp_path / "run"
    common = ["--model", "toy_centernet", "--dataset", "toy", "--data_root", str(toy8),
              "--batch_size", "4", "--out", str(out), "--log_every", "1", "--no_progress"]
    assert main([*common, "--max_steps", "3"]) == 0
    for name in ("last.pt", "best.pt", "log.jsonl", "config.yaml", "environment.yaml", "summary.json"):
        assert (out / name).is_file(), name
    assert not (out / "resume.pt").exists()  # the resume state lives in last.pt, as in stage two
    log = read_jsonl(out / "log.jsonl")
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == [1, 2, 3] and all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in log if "loss" in r)
    vals = [r for r in log if "val_map50" in r]
    assert [r["step"] for r in vals] == [2, 3] and all(0 <= r["val_map50"] <= 1 for r in vals)  # epoch = 2 steps
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == "toy_centernet"

    checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["step"] == 3 and "optimizer" in checkpoint and "rng" in checkpoint
    assert all(v.dtype != torch.float16 for v in checkpoint["state_dict"].values())  # fp32: an exact resume
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert "optimizer" not in best and any(v.dtype == torch.float16 for v in best["state_dict"].values())
    card = checkpoint["card"]
    assert card["steps"] == 3 and card["architecture"] == "toy_centernet" and card["classes"] == TOY_CLASSES
    assert "git_commit" in card and card["val_map50"] == vals[-1]["val_map50"]
    detector = load_detector(out / "last.pt")
    assert detector.classes == TOY_CLASSES and not detector.training
    preds = detector.predict([torch.rand(3, 64, 64)])
    assert preds[0]["labels"].max() < len(TOY_CLASSES)

    # A second run into the same folder must say --resume; with it, training continues at step 4.
    with pytest.raises(SystemExit) as err:
        main([*common, "--max_steps", "4"])
    assert err.value.code == 2
    assert main([*common, "--max_steps", "4", "--resume"]) == 0
    steps = [r["step"] for r in read_jsonl(out / "log.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    # --resume PATH (the folder, as in stage two) continues it from anywhere; --overwrite starts anew.
    other = [a for a in common if a not in ("--out", str(out))]
    assert main([*other, "--max_steps", "5", "--resume", str(out)]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 5
    assert main([*common, "--max_steps", "2", "--overwrite"]) == 0
    assert [r["step"] for r in read_jsonl(out / "log.jsonl") if "loss" in r] == [1, 2]


def test_resume_matches_an_uninterrupted_run(toy8, tmp_path):
    data = load_dataset("toy", split="train", root=toy8)
    settings = TrainSettings(max_steps=3, batch_size=4, seed=1, log_every=100)
    device = torch.device("cpu")

    def fresh():
        torch.manual_seed(0)
        return build_detector("toy_centernet", classes=TOY_CLASSES, weights=None)

    straight = fresh()
    train_detector(straight, data, None, tmp_path / "a", settings, device, progress=False)

    interrupted = fresh()
    original_loss, calls = interrupted.loss, []

    def loss_that_stops(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # step 3, after the epoch-end checkpoint at step 2
            raise KeyboardInterrupt
        return original_loss(*args, **kwargs)

    interrupted.loss = loss_that_stops
    with pytest.raises(KeyboardInterrupt):
        train_detector(interrupted, data, None, tmp_path / "b", settings, device, progress=False)
    torch.manual_seed(123)  # resume must not depend on the RNG state of the new process
    resumed = build_detector("toy_centernet", classes=TOY_CLASSES, weights=None)
    summary = train_detector(resumed, data, None, tmp_path / "b", settings, device, resume=True, progress=False)
    assert summary["steps"] == 3 and len(summary["losses"]) == 1  # step 3 again
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


def test_settings_take_family_defaults():
    scratch = TrainSettings(epochs=3).resolved("torchvision", steps_per_epoch=40)
    assert (scratch.optimizer, scratch.lr, scratch.max_steps, scratch.warmup_steps) == ("adamw", 1e-3, 120, 12)
    finetune = TrainSettings(max_steps=10_000).resolved("centernet", 5, pretrained=True)
    assert finetune.optimizer == "adamw" and finetune.lr == pytest.approx(4e-4)
    assert finetune.warmup_steps == 500 and finetune.max_steps == 10_000
    given = TrainSettings(lr=0.5, optimizer="SGD", warmup_steps=0).resolved("ultralytics", 5, pretrained=True)
    assert (given.optimizer, given.lr, given.warmup_steps) == ("sgd", 0.5, 0)


def test_hflip_mirrors_boxes_with_the_image():
    image = torch.zeros(3, 10, 20)
    image[:, 2:5, 1:4] = 1  # an object at x 1..4
    target = {"boxes": torch.tensor([[1.0, 2.0, 4.0, 5.0]]), "labels": torch.tensor([0])}
    flipped, t = hflip(image, target)
    assert t["boxes"].tolist() == [[16.0, 2.0, 19.0, 5.0]]
    assert flipped[:, 2:5, 16:19].eq(1).all() and flipped.sum() == image.sum()
    assert target["boxes"].tolist() == [[1.0, 2.0, 4.0, 5.0]]  # input untouched


def test_epoch_batches_deterministic_and_complete():
    a, flips_a = epoch_batches(10, 4, seed=0, epoch=3, flip_prob=0.5)
    b, flips_b = epoch_batches(10, 4, seed=0, epoch=3, flip_prob=0.5)
    c, _ = epoch_batches(10, 4, seed=0, epoch=4, flip_prob=0.5)
    assert a == b and torch.equal(flips_a, flips_b) and a != c
    assert [len(x) for x in a] == [4, 4, 2] and sorted(sum(a, [])) == list(range(10))
    assert not epoch_batches(10, 4, 0, 0, flip_prob=0.0)[1].any()


def test_optimizer_leaves_biases_and_norms_undecayed():
    detector = build_detector("toy_centernet", classes=TOY_CLASSES, weights=None).set_trainable(True)
    optimizer = make_optimizer(detector, "adamw", 1e-3, 0.05)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    total = sum(p.numel() for p in detector.parameters())
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == total


def test_unknown_model_is_a_one_line_error(toy8, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        _script().main(["--model", "no_such_detector", "--dataset", "toy", "--data_root", str(toy8),
                        "--out", str(tmp_path / "x")])
    assert err.value.code == 2
    assert "no_such_detector" in capsys.readouterr().err


# ----------------------------------------------------------------------------- slow: overfit


@pytest.mark.slow
@pytest.mark.parametrize("model, steps, batch_size", [
    ("toy_centernet", 300, 16),
    ("toy_yolov8", 300, 16),
    ("toy_yolov3", 300, 16),
    ("toy_faster_rcnn", 300, 16),
    ("toy_ssdlite", 300, 16),
])
def test_small_detector_overfits_32_toy_images(tmp_path, model, steps, batch_size):
    root = make_toy_dataset(tmp_path / "toy32", train=32, val=4, size=128, seed=0)
    out = tmp_path / model
    _script().main(["--model", model, "--dataset", "toy", "--data_root", str(root), "--split", "train",
                    "--val_split", "train", "--max_steps", str(steps), "--batch_size", str(batch_size),
                    "--hflip", "0", "--val_every", "25", "--out", str(out), "--no_progress"])
    log = read_jsonl(out / "log.jsonl")
    losses = [r["loss"] for r in log if "loss" in r]
    maps = [r["val_map50"] for r in log if "val_map50" in r]
    assert losses[-1] <= 0.5 * losses[0]
    assert max(maps) > 0.5


def test_resume_with_another_model_and_new_head_on_our_checkpoint_are_one_line_errors(toy8, tmp_path, capsys):
    main = _script().main
    out = tmp_path / "run"
    common = ["--dataset", "toy", "--data_root", str(toy8), "--batch_size", "4", "--out", str(out),
              "--no_progress", "--val_split", "none"]
    assert main(["--model", "toy_yolov3", *common, "--max_steps", "1"]) == 0
    with pytest.raises(SystemExit) as e:
        main(["--model", "toy_centernet", *common, "--max_steps", "2", "--resume"])
    assert e.value.code == 2
    assert "a run of 'toy_yolov3', not 'toy_centernet'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "toy_yolov3", *common[:-5], "--out", str(tmp_path / "b"), "--no_progress",
              "--max_steps", "1", "--weights", str(out / "last.pt"), "--new_head"])
    assert "--new_head" in capsys.readouterr().err


def test_resume_keeps_the_runs_settings_and_may_extend_it(toy8, tmp_path, capsys):
    """The rule of stage two's trainer: a resumed run keeps how it optimises (an explicit flag
    that disagrees is a one-line error naming the file); its length may change."""
    main = _script().main
    out = tmp_path / "run"
    common = ["--model", "toy_yolov3", "--dataset", "toy", "--data_root", str(toy8), "--batch_size", "4",
              "--out", str(out), "--no_progress", "--val_split", "none"]
    assert main([*common, "--max_steps", "2", "--optimizer", "sgd", "--lr", "0.01"]) == 0
    with pytest.raises(SystemExit) as e:
        main([*common, "--max_steps", "3", "--optimizer", "adamw", "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"--optimizer adamw disagrees with {out / 'last.pt'}, which was trained with sgd" in err
    assert main([*common, "--max_steps", "3", "--optimizer", "sgd", "--resume"]) == 0  # the same value is fine
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["settings"]["optimizer"] == "sgd" and state["settings"]["max_steps"] == 3
    assert state["settings"]["lr"] == pytest.approx(0.01)  # kept without being given again
    # A shipped-style checkpoint (best.pt: weights only) is no resume point.
    (out / "last.pt").write_bytes((out / "best.pt").read_bytes())
    with pytest.raises(SystemExit):
        main([*common, "--max_steps", "4", "--resume"])
    assert "is not a resumable training checkpoint" in capsys.readouterr().err


def test_photometric_augmentation_is_mild_deterministic_and_leaves_the_boxes():
    from icm.detectors.training import _EpochData, photometric

    ramp = torch.linspace(0.2, 0.8, 32)
    image = torch.stack([ramp[None, :].expand(32, 32), ramp[:, None].expand(32, 32), torch.full((32, 32), 0.5)])
    a = photometric(image, torch.Generator().manual_seed(5))
    b = photometric(image, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == image.shape and 0 <= a.min() and a.max() <= 1
    changes = [(photometric(image, torch.Generator().manual_seed(s)) - image).abs().mean().item() for s in range(40)]
    assert sum(c > 1e-6 for c in changes) >= 30  # most draws change the image (p: 0.8, 0.3, 0.5)
    assert max(changes) < 0.12  # mild: a few levels to a few percent on average

    class Items:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return image, {"boxes": torch.tensor([[1.0, 2.0, 10.0, 12.0]]), "labels": torch.tensor([0])}

    data = _EpochData(Items(), torch.zeros(2, dtype=torch.bool), augment_seed=3)
    (x0, t0), (x1, _) = data[0], data[1]
    assert torch.equal(t0["boxes"], torch.tensor([[1.0, 2.0, 10.0, 12.0]]))
    assert torch.equal(x0, data[0][0]) and not torch.equal(x0, x1)  # per index, reproducible
    assert torch.equal(_EpochData(Items(), torch.zeros(2, dtype=torch.bool))[0][0], image)


def test_augment_and_init_backbone_are_recorded_in_the_card(toy8, tmp_path, capsys):
    from icm.detectors import read_detector_checkpoint
    from icm.detectors.pretraining import save_body

    body_source = build_detector("toy_yolov3", classes=TOY_CLASSES, num_classes=6, weights=None)
    with torch.no_grad():
        for p in body_source.model.model[0].parameters():
            p.fill_(0.25)
    save_body(tmp_path / "body.pt", body_source, {"task": "test"})
    main = _script().main
    out = tmp_path / "run"
    common = ["--model", "toy_yolov3", "--dataset", "toy", "--data_root", str(toy8), "--batch_size", "4",
              "--no_progress", "--val_split", "none", "--max_steps", "1", "--lr", "1e-9"]
    assert main([*common, "--augment", "--init_backbone", str(tmp_path / "body.pt"), "--out", str(out)]) == 0
    card = read_detector_checkpoint(out / "last.pt")["card"]
    assert card["settings"]["augment"] is True and card["init_backbone"]["task"] == "test"
    trained = build_detector("toy_yolov3", weights=str(out / "last.pt"))
    first = next(trained.model.model[0].parameters())
    assert torch.allclose(first.float(), torch.full_like(first.float(), 0.25), atol=1e-3)  # started from the body
    with pytest.raises(SystemExit) as e:
        main([*common, "--init_backbone", str(tmp_path / "body.pt"), "--weights", str(out / "last.pt"),
              "--out", str(tmp_path / "other")])
    assert e.value.code == 2 and "--init_backbone starts from random weights" in capsys.readouterr().err


def test_a_log_line_torn_by_a_crash_is_skipped_and_the_resumed_run_logs_on(toy8, tmp_path):
    main = _script().main
    out = tmp_path / "run"
    common = ["--model", "toy_centernet", "--dataset", "toy", "--data_root", str(toy8), "--batch_size", "4",
              "--out", str(out), "--log_every", "1", "--no_progress", "--val_split", "none"]
    assert main([*common, "--max_steps", "2"]) == 0
    whole = (out / "log.jsonl").read_text()
    with (out / "log.jsonl").open("a") as f:
        f.write('{"step": 3, "epoch": 2, "lo')  # the process died mid-append
    assert main([*common, "--max_steps", "3", "--resume"]) == 0
    text = (out / "log.jsonl").read_text()
    assert text.startswith(whole) and '"lo\n{"step": 3' in text  # the next record starts a fresh line
    with pytest.warns(UserWarning, match="torn"):
        records = read_jsonl(out / "log.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]


def test_default_run_folders_are_one_per_settings_with_a_latest_link(toy8, tmp_path, monkeypatch, capsys):
    script = _script()
    monkeypatch.setattr(script, "REPO_ROOT", tmp_path)
    common = ["--model", "toy_centernet", "--dataset", "toy", "--data_root", str(toy8), "--batch_size", "4",
              "--max_steps", "1", "--no_progress", "--val_split", "none"]
    assert script.main([*common, "--lr", "1e-3"]) == 0
    assert script.main([*common, "--lr", "2e-3"]) == 0
    runs = sorted(p for p in (tmp_path / "runs" / "detectors").iterdir() if p.name != "latest")
    assert len(runs) == 2 and all(p.name.startswith("toy_centernet-") and (p / "last.pt").is_file() for p in runs)
    latest = (tmp_path / "runs" / "detectors" / "latest").resolve()
    assert torch.load(latest / "last.pt", weights_only=True)["settings"]["lr"] == pytest.approx(2e-3)
    with pytest.raises(SystemExit):  # the same settings again: that run's folder, which it never replaces
        script.main([*common, "--lr", "2e-3"])
    assert "holds a run" in capsys.readouterr().err


def test_instance_masks_follow_their_boxes_through_flips_and_train_the_mask_head(toy8, tmp_path):
    from icm.data import DetectionImageDataset
    from icm.detectors.training import predicts_masks

    data = load_dataset("toy", split="train", root=toy8)
    image, target = DetectionImageDataset(data, masks=True)[0]
    masks, boxes = target["masks"], target["boxes"]
    assert masks.shape == (len(boxes), 64, 64) and masks.dtype == torch.uint8 and masks.flatten(1).sum(1).min() > 0
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.round().long().tolist()):
        inside = torch.zeros_like(mask)
        inside[y1:y2, x1:x2] = 1
        assert (mask & ~inside.bool()).sum() == 0  # each mask inside its box
    _, flipped = hflip(image, target)
    assert torch.equal(flipped["masks"], masks.flip(-1))
    with pytest.raises(ValueError, match="has no instance masks file"):
        DetectionImageDataset(load_dataset(str(toy8 / "JPEGImages")), masks=True)

    torch.manual_seed(0)
    detector = build_detector("toy_mask_rcnn", classes=TOY_CLASSES, weights=None)
    assert predicts_masks(detector) and not predicts_masks(build_detector("toy_faster_rcnn", classes=TOY_CLASSES,
                                                                          weights=None))
    summary = train_detector(detector, data, None, tmp_path / "m", TrainSettings(max_steps=6, batch_size=4, seed=0,
                                                                                   log_every=1), torch.device("cpu"),
                             progress=False)
    assert summary["steps"] == 6 and all(math.isfinite(v) for v in summary["losses"])
    again = load_detector(tmp_path / "m" / "last.pt")
    pred = again.predict([image])[0]
    assert "masks" in pred and pred["masks"].shape[-2:] == (64, 64)
