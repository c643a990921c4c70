import argparse

import pytest
import torch

from icm.cli import detector_weights, exit_on_user_error, fraction, key_value, resolve_device, shard
from icm.io import ImageReadError


def test_fraction_accepts_fractions_and_floats():
    assert fraction("8/255") == pytest.approx(8 / 255)
    assert fraction("0.03") == pytest.approx(0.03)
    assert fraction("3e-2") == pytest.approx(0.03)
    for bad in ("eight", "1/0", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            fraction(bad)


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
