import argparse
import os

import pytest
import torch

from icm.cli import (
    detector_weights,
    exit_on_user_error,
    fraction,
    key_value,
    limit,
    non_negative_int,
    non_negative_number,
    positive_int,
    positive_number,
    probability,
    resolve_device,
    shard,
)
from icm.io import ImageReadError


def test_fraction_accepts_fractions_and_floats():
    assert fraction("8/255") == pytest.approx(8 / 255)
    assert fraction("0.03") == pytest.approx(0.03)
    assert fraction("3e-2") == pytest.approx(0.03)
    for bad in ("eight", "1/0", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            fraction(bad)


def test_validated_number_types_accept_their_range_and_reject_the_rest():
    assert (positive_int("3"), non_negative_int("0"), limit("7"), limit("all"), limit("ALL")) == (3, 0, 7, None, None)
    assert positive_number("8/255") == pytest.approx(8 / 255) and non_negative_number("0") == 0.0
    assert (probability("0"), probability("1"), probability("0.7")) == (0.0, 1.0, 0.7)
    for kind, bad in ((positive_int, "0"), (positive_int, "-1998"), (positive_int, "2.7"), (positive_int, "x"),
                      (non_negative_int, "-1"), (limit, "0"), (limit, "some"), (positive_number, "0"),
                      (positive_number, "-1e-4"), (positive_number, "inf"), (positive_number, "nan"),
                      (non_negative_number, "-0.5"), (probability, "1.5"), (probability, "-0.1")):
        with pytest.raises(argparse.ArgumentTypeError):
            kind(bad)


def test_key_value_and_shard():
    assert key_value("yolov3=/w/y.pt") == ("yolov3", "/w/y.pt")
    with pytest.raises(argparse.ArgumentTypeError):
        key_value("no-equals")
    assert shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "a/b", "1"):
        with pytest.raises(argparse.ArgumentTypeError):
            shard(bad)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_torchrun_local_ranks_share_the_gpus_there_are(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for local_rank, gpu in [(0, 0), (1, 1), (2, 0), (5, 1)]:
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        assert resolve_device("auto") == torch.device("cuda", gpu)
        assert resolve_device("cuda") == torch.device("cuda", gpu)  # an index, as DDP and set_device need
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_user_errors_become_one_line(capsys, monkeypatch):
    monkeypatch.delenv("ICM_DEBUG", raising=False)

    @exit_on_user_error
    def main():
        raise ImageReadError("photo.jpg: cannot read image (truncated)")

    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: photo.jpg: cannot read image (truncated)\n"


def test_programming_errors_keep_their_traceback():
    @exit_on_user_error
    def main():
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        main()


def test_detector_weights_from_flags_and_configs():
    assert detector_weights([("a", "/w/a.pt"), "b=none", "c=Random"]) == {"a": "/w/a.pt", "b": None, "c": None}
    assert detector_weights({"a": "x.pt"}) == {"a": "x.pt"}
    assert detector_weights([{"a": "x.pt"}, "b=y.pt"]) == {"a": "x.pt", "b": "y.pt"}
    assert detector_weights(None) == {}
    with pytest.raises(argparse.ArgumentTypeError):
        detector_weights(["no-equals"])


def stage_cli_runs(tmp_path, out) -> dict:
    """Each stage CLI's main and a tiny run of it that writes into ``out``."""
    from helpers import toy_image

    from icm.aafg import train as stage_one
    from icm.compression import train as stage_two
    from icm.data import make_toy_dataset
    from icm.evaluation import evaluate
    from icm.io import write_image

    images = tmp_path / "images"
    for i in range(2):
        write_image(images / f"{i}.png", toy_image(i, 32, 32))
    toy = make_toy_dataset(tmp_path / "toy", train=2, val=1, size=64)
    return {
        "stage one": (stage_one.main, ["--dataset", "TOY", "--data_root", str(toy), "--models", "toy_centernet",
                                       "--weights", "toy_centernet=none", "--meta_steps", "1", "--inner_steps", "1",
                                       "--no_progress", "--out", str(out)]),
        "stage two": (stage_two.main, ["--dataset", str(images), "--no_pretrained", "--N", "8", "--M", "8",
                                       "--patch_size", "32", "--num_workers", "0", "--max_steps", "1", "--out", str(out)]),
        "evaluation": (evaluate.main, ["--dataset", str(images), "--codecs", "none", "--no_progress", "--out", str(out)]),
    }


def test_an_output_path_that_is_a_file_is_one_line_in_every_stage_cli(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file where the output folder should go")
    for name, (main, argv) in stage_cli_runs(tmp_path, taken).items():
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1] == f"error: {taken}: is a file, not a folder", (name, err)
    assert taken.read_text().startswith("a file")


def test_an_output_folder_that_cannot_be_written_is_one_line_in_every_stage_cli(tmp_path, capsys, monkeypatch):
    """Root ignores permission bits, so the refusal is the operating system's error, raised
    where the folder would be made (what a read-only mount or a foreign folder gives)."""
    import errno

    locked = tmp_path / "read_only"
    runs = stage_cli_runs(tmp_path, locked / "out")
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(locked)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    for name, (main, argv) in runs.items():
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1].startswith(f"error: {locked}") and err[-1].endswith(": Permission denied"), (name, err)
        assert "Traceback" not in "\n".join(err)
    assert not locked.exists()


def test_every_command_line_flag_has_help_that_shows_its_default():
    """Every CLI with a ``build_parser`` (stage scripts, tools, benchmarks): each flag has a
    help text, and --help prints its default."""
    import argparse
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = [f for folder in ("icm", "scripts", "benchmarks", "Evaluation", "MetaAAFG", "Compression")
             for f in sorted((root / folder).rglob("*.py")) if "def build_parser" in f.read_text()]
    assert len(files) >= 10
    missing = []
    for path in files:
        name = f"_help_{path.parent.name}_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        try:
            spec.loader.exec_module(module)
            parser = module.build_parser()
        finally:
            sys.modules.pop(name, None)
        shows_defaults = issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
        for action in parser._actions:
            if action.dest == "help" or isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help:
                missing.append(f"{path.name} {action.option_strings or action.dest}: no help")
            elif not (shows_defaults or "%(default)" in action.help or action.default is None):
                missing.append(f"{path.name} {action.option_strings}: default {action.default!r} not shown")
    assert not missing, missing
