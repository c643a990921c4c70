"""Tests for Compression/train_compression.py: the stage-two CLI end to end on toy pairs."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import toy_image, truncate, write_toy_stage_one

from icm import codec
from icm.codec import (
    compress_image,
    crop,
    decompress_image,
    load_codec,
    pad_to_multiple,
    real_bpp,
    save_codec_checkpoint,
)
from icm.compression import train as train_compression
from icm.compression.datasets import read_pairs, split_pairs
from icm.config import REPO_ROOT, load_yaml
from icm.io import read_image_tensor, read_jsonl, write_image

SCRIPT = REPO_ROOT / "Compression" / "train_compression.py"


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    return write_toy_stage_one(tmp_path_factory.mktemp("toy"), count=8)


def toy_args(data: Path, save_dir: Path, *extra: str) -> list[str]:
    """8 pairs -> 6 train / 2 val, batch 2: 3 steps per epoch."""
    return ["--dataset", str(data), "--backbone", "bmshj2018", "--N", "32", "--M", "48",
            "--patch_size", "64", "--batch_size", "2", "--num_workers", "0", "--log_every", "1",
            "--lr", "1e-3", "--val_fraction", "0.25", "--no_tensorboard", "--out", str(save_dir), *extra]


def records(save_dir: Path, split: str) -> dict[int, dict]:
    """Log records of one split by step (later lines win, as after a resume)."""
    return {r["step"]: r for r in read_jsonl(save_dir / "log.jsonl") if r["split"] == split}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / torch.mean((a - b) ** 2).item())


def test_training_writes_logs_and_checkpoints_that_code_real_bitstreams(toy_data, tmp_path):
    save_dir = tmp_path / "run"
    args = toy_args(toy_data, save_dir, "--max_steps", "6", "--tensorboard")
    assert train_compression.main(args) == 0

    train = records(save_dir, "train")
    assert sorted(train) == [1, 2, 3, 4, 5, 6]
    assert sorted(records(save_dir, "val")) == [3, 6]  # one validation per epoch
    assert all(math.isfinite(r["loss"]) and r["bpp_loss"] > 0 for r in train.values())
    final = records(save_dir, "final")[6]
    assert final["epoch"] == 2 and final["replica_max_difference"] == 0.0
    assert (save_dir / "config.yaml").is_file() and (save_dir / "environment.yaml").is_file()
    assert list((save_dir / "tensorboard").glob("events.out.tfevents.*"))

    for name in ("last.pth.tar", "best.pth.tar"):
        checkpoint = torch.load(save_dir / name, map_location="cpu", weights_only=True)
        assert checkpoint["format"] == "icm-codec"
        assert checkpoint["arch"] == {"backbone": "bmshj2018-hyperprior", "quality": 3, "metric": "mse",
                                      "N": 32, "M": 48}
        assert set(checkpoint) >= {"optimizer", "aux_optimizer", "lr_scheduler", "rng", "config", "epoch", "step"}
    last = torch.load(save_dir / "last.pth.tar", map_location="cpu", weights_only=True)
    assert (last["step"], last["epoch"], last["epoch_step"]) == (6, 2, 0)
    assert last["lambda"] == 0.0067 and last["config"]["lr"] == 1e-3

    model, _ = load_codec(save_dir / "best.pth.tar")
    x = read_image_tensor(Path(toy_data).parent / "originals" / "img0.png").unsqueeze(0)  # 80x72
    compressed = compress_image(model, x)
    x_hat = decompress_image(model, compressed)
    bpp = real_bpp(compressed)
    assert math.isfinite(bpp) and bpp > 0
    with torch.no_grad():
        padded, pad = pad_to_multiple(x, 64)
        forward_x_hat = crop(model(padded)["x_hat"], pad).clamp(0, 1)
    assert abs(psnr(x_hat, x) - psnr(forward_x_hat, x)) < 0.5


def test_resume_continues_exactly_like_an_uninterrupted_run(toy_data, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_compression.main(toy_args(toy_data, whole, "--max_steps", "5"))
    train_compression.main(toy_args(toy_data, split, "--max_steps", "2"))  # stops mid-epoch
    stopped = torch.load(split / "last.pth.tar", map_location="cpu", weights_only=True)
    assert (stopped["step"], stopped["epoch"], stopped["epoch_step"]) == (2, 0, 2)
    train_compression.main(toy_args(toy_data, split, "--max_steps", "4", "--resume", str(split)))  # the folder
    train_compression.main(toy_args(toy_data, split, "--max_steps", "5", "--resume"))  # alone: the run in --out

    expected, resumed = records(whole, "train"), records(split, "train")
    for step in (3, 4, 5):  # step 3 ends epoch 0 (validation, scheduler), 4-5 run epoch 1
        for key in ("loss", "bpp_loss", "mse_loss", "aux_loss"):
            assert resumed[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-5), (step, key)
    a = torch.load(whole / "last.pth.tar", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(split / "last.pth.tar", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a if a[k].is_floating_point())


def test_cosine_schedule_decays_every_step_and_resumes_on_the_same_curve(toy_data, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_compression.main(toy_args(toy_data, whole, "--max_steps", "5", "--scheduler", "cosine"))
    lrs = [records(whole, "train")[s]["lr"] for s in range(1, 6)]  # logged after each step
    expected = [1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * s / 5))) for s in range(1, 6)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert lrs[-1] == pytest.approx(1e-5)  # 1% of --lr at --max_steps, across the epoch end at step 3
    train_compression.main(toy_args(toy_data, split, "--max_steps", "2", "--scheduler", "cosine"))
    train_compression.main(toy_args(toy_data, split, "--max_steps", "5", "--resume", str(split / "last.pth.tar")))
    # The curve follows the --max_steps in force: the resumed steps lie on the 5-step curve.
    assert [records(split, "train")[s]["lr"] for s in (3, 4, 5)] == pytest.approx(expected[2:], rel=1e-6)


def test_a_new_run_never_replaces_another_unless_asked(toy_data, tmp_path, capsys):
    run = tmp_path / "run"
    train_compression.main(toy_args(toy_data, run, "--max_steps", "3"))
    before = (run / "last.pth.tar").read_bytes()
    error = one_line_error(capsys, toy_args(toy_data, run, "--max_steps", "2"))
    assert f"{run} holds a run (last.pth.tar, best.pth.tar, log.jsonl)" in error and "--overwrite" in error
    assert (run / "last.pth.tar").read_bytes() == before  # untouched
    train_compression.main(toy_args(toy_data, run, "--max_steps", "2", "--overwrite"))
    assert sorted(records(run, "train")) == [1, 2]  # the old run's log is gone, not appended to
    assert torch.load(run / "last.pth.tar", map_location="cpu", weights_only=True)["step"] == 2


def test_a_non_finite_loss_stops_the_run_naming_the_checkpoint_it_started_from(toy_data, tmp_path, capsys):
    base = tmp_path / "base"
    train_compression.main(toy_args(toy_data, base, "--max_steps", "1"))
    checkpoint = torch.load(base / "last.pth.tar", map_location="cpu", weights_only=True)
    model = codec.build_codec("bmshj2018", 3, pretrained=False, N=32, M=48)
    state = checkpoint["state_dict"]
    state[next(k for k in state if k.startswith("g_a.0.weight"))].fill_(float("nan"))
    model.load_state_dict(state, strict=False)
    bad = tmp_path / "nan.pth.tar"
    save_codec_checkpoint(bad, model, checkpoint["arch"])
    error = one_line_error(capsys, toy_args(toy_data, tmp_path / "run", "--max_steps", "2", "--checkpoint", str(bad)))
    assert error.startswith("error: step 1: the loss is nan (not finite)") and str(bad) in error


def test_default_folders_differ_by_settings_and_latest_points_at_the_newest(toy_data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_compression, "REPO_ROOT", tmp_path)
    base = toy_args(toy_data, tmp_path / "unused", "--max_steps", "1")
    del base[base.index("--out") : base.index("--out") + 2]  # no --out: the default folder
    train_compression.main(base)
    train_compression.main([*base, "--lr", "2e-3"])  # only the lr differs: another folder
    runs = sorted((tmp_path / "Compression" / "checkpoints").glob("bmshj2018-hyperprior-q3-mse-beta1-*"))
    assert len(runs) == 2 and all((r / "last.pth.tar").is_file() for r in runs)
    latest = tmp_path / "Compression" / "checkpoints" / "latest"
    assert latest.is_symlink() and latest.resolve() == next(
        r for r in runs if load_yaml(r / "config.yaml")["lr"] == 2e-3).resolve()


def test_checkpoint_starts_a_fine_tune_with_fresh_counters(toy_data, tmp_path):
    base = tmp_path / "base"
    train_compression.main(toy_args(toy_data, base, "--max_steps", "6"))
    tuned = tmp_path / "tuned"
    train_compression.main(toy_args(toy_data, tuned, "--max_steps", "2", "--beta", "0",
                                    "--checkpoint", str(base / "last.pth.tar")))
    checkpoint = torch.load(tuned / "last.pth.tar", map_location="cpu", weights_only=True)
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["epoch_step"]) == (2, 0, 2)
    assert int(checkpoint["optimizer"]["state"][0]["step"]) == 2  # fresh Adam, not the base run's
    assert checkpoint["beta"] == 0.0
    # Starts from the trained weights: far below the loss of a random init.
    assert records(tuned, "train")[1]["loss"] < 0.8 * records(base, "train")[1]["loss"]


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        train_compression.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("error: ", "train_compression.py: error: "))  # ours, or argparse's after its usage
    return last


def test_resume_keeps_the_runs_settings_and_folder(toy_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_compression, "REPO_ROOT", tmp_path)  # where a default save_dir would go
    run_flags = ("--quality", "2", "--beta", "0.5", "--lambda", "0.01", "--seed", "3")
    whole, run = tmp_path / "whole", tmp_path / "run"
    train_compression.main(toy_args(toy_data, whole, "--max_steps", "4", *run_flags))
    train_compression.main(toy_args(toy_data, run, "--max_steps", "2", *run_flags))
    resume = str(run / "last.pth.tar")
    # Only what may change, plus one setting repeated with the run's value: the rest
    # (lambda, beta, seed, N/M, patch and batch size, lr) comes from the checkpoint.
    plain = ["--dataset", str(toy_data), "--num_workers", "0", "--no_tensorboard", "--log_every", "1"]
    assert train_compression.main([*plain, "--max_steps", "4", "--quality", "2", "--resume", resume]) == 0

    assert not (tmp_path / "Compression").exists()  # into the run's folder, not a default one
    last = torch.load(run / "last.pth.tar", map_location="cpu", weights_only=True)
    assert (last["step"], last["lambda"], last["beta"]) == (4, 0.01, 0.5)
    assert last["config"]["seed"] == 3 and last["config"]["patch_size"] == 64 and last["config"]["max_steps"] == 4
    assert load_yaml(run / "config.yaml")["beta"] == 0.5
    expected, resumed = records(whole, "train"), records(run, "train")
    for step in (3, 4):
        assert resumed[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-5, abs=1e-5)

    # A config's fine-tune start point and output folder yield to --resume PATH (configs/toy.yaml has both).
    config = tmp_path / "finetune.yaml"
    config.write_text(f"compression:\n  checkpoint: {tmp_path / 'absent.pth.tar'}\n  beta: 0.5\n"
                      f"  save_dir: {tmp_path / 'config_folder'}\n")
    assert train_compression.main([*plain, "--config", str(config), "--max_steps", "5", "--resume", resume]) == 0
    assert torch.load(run / "last.pth.tar", map_location="cpu", weights_only=True)["step"] == 5
    assert not (tmp_path / "config_folder").exists()
    with pytest.warns(UserWarning, match="nothing to train, the run is at epoch .* and step 5"):
        train_compression.main([*plain, "--max_steps", "5", "--resume", resume])

    config = tmp_path / "beta.yaml"
    config.write_text("compression:\n  beta: 0.7\n")
    for conflict, message in ((["--beta", "1.0"], "--beta 1.0 disagrees with"),  # 1.0 is also the default
                              (["--lambda", "0.02"], "--lambda 0.02 disagrees with"),
                              (["--metric", "ms-ssim", "--patch_size", "256"], "--metric ms-ssim disagrees with"),
                              (["--config", str(config)], "--beta 0.7 disagrees with")):
        error = one_line_error(capsys, [*plain, "--resume", resume, *conflict])
        assert message in error and f"{resume}, which was trained with" in error and "--checkpoint" in error
    assert torch.load(run / "last.pth.tar", map_location="cpu", weights_only=True)["step"] == 5  # untouched


def test_resume_from_a_codec_asset_says_to_fine_tune_instead(toy_data, tmp_path, capsys):
    asset = tmp_path / "codec.pth.tar"
    save_codec_checkpoint(asset, codec.build_codec("bmshj2018", 3, pretrained=False, N=32, M=48),
                          {"backbone": "bmshj2018", "quality": 3, "metric": "mse"})
    error = one_line_error(capsys, toy_args(toy_data, tmp_path / "run", "--resume", str(asset)))
    assert error == (f"error: {asset} is not a resumable stage-two checkpoint (no optimiser state); "
                     "use --checkpoint to fine-tune from it")
    assert not (tmp_path / "run").exists()


def test_unreadable_images_are_skipped_with_one_warning_and_too_many_stop_the_run(tmp_path, capsys):
    root = write_toy_stage_one(tmp_path, count=8, size=(64, 64))
    train_pairs, _ = split_pairs(read_pairs(root), 0.25, seed=0)
    bad = truncate(train_pairs[1].augmented)
    with pytest.warns(UserWarning, match="unreadable") as warned:
        train_compression.main(toy_args(root, tmp_path / "skip", "--max_steps", "3", "--num_workers", "2",
                                        "--max_unreadable_fraction", "0.2"))
    [message] = [str(w.message) for w in warned if "unreadable" in str(w.message)]
    assert message == f"epoch 0: skipped 1 unreadable image pair(s), the next pair stands in (1 of 8 so far): {bad}"
    assert records(tmp_path / "skip", "final")[3]["epoch"] == 1

    error = one_line_error(capsys, toy_args(root, tmp_path / "stop", "--max_steps", "3", "--num_workers", "2"))
    assert error == (f"error: {bad}: 1 of 6 image pairs are unreadable, more than --max_unreadable_fraction 0.01; "
                     "check the dataset")

    # A pair whose halves differ in size is skipped and counted like an unreadable one.
    write_image(train_pairs[2].augmented, toy_image(0, 40, 40))
    with pytest.warns(UserWarning, match="unreadable") as warned:
        train_compression.main(toy_args(root, tmp_path / "mismatch", "--max_steps", "3", "--num_workers", "2",
                                        "--max_unreadable_fraction", "0.4"))
    [message] = [str(w.message) for w in warned if "unreadable" in str(w.message)]
    assert "skipped 2 unreadable image pair(s)" in message and str(train_pairs[2].augmented) in message


def test_offline_zoo_weights_and_bad_flags_are_one_line_errors(toy_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(codec, "ZOO_HOST", "compressai.invalid")
    message = one_line_error(capsys, ["--backbone", "bmshj2018", "--quality", "3", "--lr", "1e-4",
                                      "--dataset", str(toy_data), "--save_dir", str(tmp_path / "x")])
    assert "bmshj2018-hyperprior-3-6d87be32.pth.tar" in message and "--checkpoint PATH" in message
    assert not (tmp_path / "x").exists()  # nothing written on failure

    assert "give one" in one_line_error(capsys, toy_args(toy_data, tmp_path / "y", "--checkpoint", "a", "--resume", "b"))
    assert "missing_folder: dataset folder not found" in one_line_error(
        capsys, toy_args(tmp_path / "missing_folder", tmp_path / "z"))
    assert "patch_size" in one_line_error(capsys, toy_args(toy_data, tmp_path / "w", "--metric", "ms-ssim"))
    assert "--max_steps: -1: give 0 or more" in one_line_error(capsys, toy_args(toy_data, tmp_path / "u", "--max_steps", "-1"))
    assert not (tmp_path / "u").exists()
    assert "give --max_steps" in one_line_error(capsys, toy_args(toy_data, tmp_path / "v", "--scheduler", "cosine"))


def test_seed_command_dataset_path_falls_back_to_stage_one_folder(tmp_path, monkeypatch):
    (tmp_path / "MetaAAFG" / "augmented_data").mkdir(parents=True)
    (tmp_path / "Compression").mkdir()
    monkeypatch.setattr(train_compression, "REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path / "Compression")
    assert train_compression.resolve_dataset_path("./augmented_data") == tmp_path / "MetaAAFG" / "augmented_data"
    (tmp_path / "Compression" / "augmented_data").mkdir()
    assert train_compression.resolve_dataset_path("./augmented_data") == Path("./augmented_data")


def subprocess_env(tmp_path: Path) -> dict:
    return {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": ""}


@pytest.mark.slow  # ~25 s: a fresh interpreter imports torch, compressai (and torch_geometric)
def test_seed_command_runs_as_a_script_from_inside_compression(toy_data, tmp_path):
    # The paper's command, verbatim but for where the data lives and a one-step limit. Offline
    # it must stop with the one-line zoo error; online it downloads and trains one step.
    result = subprocess.run(
        [sys.executable, "train_compression.py", "--backbone", "bmshj2018", "--quality", "3", "--lr", "1e-4",
         "--dataset", str(toy_data), "--max_steps", "1", "--num_workers", "0", "--patch_size", "64",
         "--no_tensorboard", "--save_dir", str(tmp_path / "run")],
        cwd=REPO_ROOT / "Compression", env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    if result.returncode == 0:
        assert (tmp_path / "run" / "last.pth.tar").is_file()
    else:
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: cannot download CompressAI zoo weights") and "--checkpoint" in last
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_script_runs_from_another_directory_with_a_relative_dataset(toy_data, tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *toy_args(Path("augmented_data"), tmp_path / "run", "--max_steps", "2")],
        cwd=toy_data.parent, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert torch.load(tmp_path / "run" / "last.pth.tar", weights_only=True)["step"] == 2


@pytest.mark.slow
def test_torchrun_two_cpu_processes_keep_identical_weights(toy_data, tmp_path):
    save_dir = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
         *toy_args(toy_data, save_dir, "--max_steps", "4", "--device", "cpu")],
        cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = records(save_dir, "final")[4]
    assert final["replica_max_difference"] == 0.0
    checkpoint = torch.load(save_dir / "last.pth.tar", map_location="cpu", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    # 6 train pairs over 2 ranks with batch 2: 2 steps per epoch, so 4 steps end epoch 1.
    assert (checkpoint["epoch"], checkpoint["epoch_step"]) == (2, 0)
    assert sorted(records(save_dir, "val")) == [2, 4]


def test_help_lists_every_flag_with_its_default_and_config_files_set_defaults(tmp_path):
    text = " ".join(train_compression.build_parser().format_help().split())
    for flag in ("--beta", "--lambda", "--resume", "--checkpoint", "--max_steps", "--val_fraction", "--aux_lr"):
        assert flag in text
    assert "(default: 1.0)" in text and "(default: 256)" in text
    args = train_compression.parse_args_with_config(
        train_compression.build_parser(),
        ["--config", str(REPO_ROOT / "configs" / "compression" / "toy.yaml"), "--dataset", "d", "--lr", "5e-4"],
        "compression",
    )
    assert (args.N, args.M, args.pretrained, args.patch_size) == (64, 96, False, 128)
    assert args.lr == 5e-4  # the command line wins over the file


def test_console_script_entry_point_resolves_to_main():
    import importlib
    import re

    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    module, attr = re.search(r'^icm-train-compression = "([\w.]+):(\w+)"', pyproject, re.M).groups()
    assert getattr(importlib.import_module(module), attr) is train_compression.main


def test_explicit_flags_are_those_on_the_command_line_or_in_the_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("compression:\n  lr: 0.002\n")
    argv = ["--dataset", "d", "--beta", "1.0", "--config", str(config)]
    args = train_compression.parse_args_with_config(train_compression.build_parser(), argv, "compression")
    explicit = train_compression.explicit_flags(argv, args)
    assert {"dataset", "beta", "lr", "config"} <= explicit  # beta at its default value, but given
    assert not explicit & {"lmbda", "quality", "metric", "seed", "batch_size"}
    args.quality = 5  # set in code, as a programmatic caller would: counts as explicit
    assert "quality" in train_compression.explicit_flags([], args)
