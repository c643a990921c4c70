"""Hostile and careless inputs, in one place: a pickle with a payload, forged and corrupted
bitstreams, a corrupted checkpoint, manifest paths that leave their folder, records torn at
every position, and a second writer of the same output."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from icm import codec
from icm.detectors import build_detector
from icm.evaluation.codec_file import main
from icm.io import read_image_tensor, read_jsonl
from icm.manifest import MANIFEST_NAME, read_manifest_pairs

ROOT = Path(__file__).resolve().parent.parent


def run_codec_tool(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err.strip()


def test_a_record_torn_at_any_position_is_skipped(tmp_path):
    record = {"id": "train_00001", "source": "/data/toy/JPEGImages/train_00001.png", "output": "images/x.png",
              "width": 128, "linf": 8.0, "loss_before": {"m": 1.2345678, "n": -0.5e-3}, "flags": [True, False, None]}
    line = json.dumps(record)
    path = tmp_path / "m.jsonl"
    for cut in range(1, len(line)):
        path.write_text(json.dumps({"id": "a"}) + "\n" + line[:cut])
        with pytest.warns(UserWarning, match="1 torn line"):
            assert read_jsonl(path) == [{"id": "a"}], cut


def test_a_lock_names_its_live_holder_and_a_dead_ones_is_taken_over(tmp_path):
    import subprocess
    import sys

    from icm import io as icm_io

    lock = tmp_path / ".lock.shard-0-of-1"
    with icm_io.held_lock(lock):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(icm_io.FolderLockedError, match=f"held by pid {os.getpid()} on .*; use --shard"):
            with icm_io.held_lock(lock, hint="use --shard"):
                pass
    assert not lock.exists()  # released
    host = icm_io._WRITER.rsplit("-", 1)[0]
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    lock.write_text(json.dumps({"host": host, "pid": dead}))
    with pytest.warns(UserWarning, match="taking over the lock"):
        with icm_io.held_lock(lock):
            pass
    lock.write_text(json.dumps({"host": "elsewhere", "pid": dead}))  # cannot be checked from here
    with pytest.raises(icm_io.FolderLockedError, match="--force_unlock"):
        with icm_io.held_lock(lock):
            pass
    with pytest.warns(UserWarning, match="taking over"):
        with icm_io.held_lock(lock, force=True):
            pass


def test_outputs_that_leave_the_folder_are_refused_by_line(tmp_path):
    out = tmp_path / "augmented_data"
    out.mkdir()
    for bad in ("/etc/passwd", "../../x.png", "images/../../x.png"):
        (out / MANIFEST_NAME).write_text(json.dumps({"id": "a", "source": "/etc/hostname", "output": "images/a.png"})
                                         + "\n" + json.dumps({"id": "b", "source": "/etc/hostname", "output": bad}) + "\n")
        with pytest.raises(ValueError, match=f"{MANIFEST_NAME}:2: output .* leaves .*refused"):
            read_manifest_pairs(out)


def test_a_checkpoint_whose_tensors_changed_is_refused_by_name(tmp_path):
    from icm.detectors import build_detector, load_detector, save_detector_checkpoint

    model = codec.build_codec("bmshj2018-hyperprior", 1, pretrained=False, N=8, M=12)
    path = tmp_path / "codec.pth.tar"
    codec.save_codec_checkpoint(path, model, {"backbone": "bmshj2018-hyperprior", "quality": 1, "metric": "mse"})
    codec.load_codec(path)  # intact: loads
    checkpoint = torch.load(path, weights_only=True)
    key = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    checkpoint["state_dict"][key].view(-1)[0] += 1e-3  # a flipped bit, as a disk or a copy would
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=f"{path}: corrupted checkpoint"):
        codec.load_codec(path)

    detector = build_detector("toy_centernet", classes=["a", "b"], num_classes=2, weights=None)
    path = tmp_path / "det.pt"
    save_detector_checkpoint(path, detector)
    load_detector(path)
    checkpoint = torch.load(path, weights_only=True)
    key = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    checkpoint["state_dict"][key].view(-1)[-1] *= -1
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=f"{path}: corrupted checkpoint"):
        load_detector(path)


def test_a_file_that_is_no_checkpoint_is_named_by_evaluation_before_any_work(tmp_path, capsys):
    from icm.evaluation import evaluate

    text = tmp_path / "notes.pth.tar"
    text.write_text("hello, this is a text file renamed\n")
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(bytes(range(7, 107)))
    for path in (text, junk):
        with pytest.raises(ValueError, match=f"{path}: not a PyTorch checkpoint"):
            codec.read_checkpoint(path)
        with pytest.raises(SystemExit) as e:
            evaluate.main(["--dataset", "toy", "--limit", "1", "--codecs", f"x={path}", "--no_progress",
                           "--out", str(tmp_path / "eval")])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1].startswith(f"error: {path}: not a PyTorch checkpoint"), err
    assert not (tmp_path / "eval" / "x.json").exists()


class _Payload:
    """A pickle that runs code when loaded (it writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_with_a_payload_never_runs_and_a_trusted_file_converts_once(tmp_path, capsys):

    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, evil)
    with pytest.raises(ValueError, match="evil.pt: ultralytics' safe loader refused it .* nothing in it was run"):
        build_detector("toy_yolov8", weights=evil)
    assert not marker.exists()

    from ultralytics.nn.tasks import DetectionModel

    network = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    network.names = {0: "square", 1: "circle"}
    trusted = tmp_path / "trusted.pt"
    torch.save({"model": network, "train_args": {}}, trusted)
    spec = importlib.util.spec_from_file_location("convert_weights", ROOT / "scripts" / "convert_weights.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    # An ordinary ultralytics checkpoint passes the safe loader (ultralytics' own classes only),
    # as an official asset read back from a cache would; so it converts without --trust_pickle.
    direct = build_detector("yolov8", weights=trusted)
    assert direct.native_classes == ["square", "circle"]
    assert convert.main(["yolov8", str(trusted), str(tmp_path / "ours.pt")]) == 0
    with pytest.raises(SystemExit):  # a payload is refused by conversion too, without running
        convert.main(["yolov8", str(evil), str(tmp_path / "evil_converted.pt")])
    assert "--trust_pickle" in capsys.readouterr().err and not (tmp_path / "evil_converted.pt").exists()
    assert not marker.exists()
    loaded = build_detector("yolov8", weights=tmp_path / "ours.pt")  # plain data: weights_only
    assert loaded.native_classes == ["square", "circle"]
    assert torch.equal(loaded.model.model[0].conv.weight, network.model[0].conv.weight)


def _reheader(data: bytes, change: dict, version: int = 2) -> bytes:
    """The same file with header fields changed and a valid checksum (a forged file)."""
    import hashlib
    import json
    import struct

    head_len = struct.unpack_from(">H", data, 5)[0]
    header = json.loads(data[7 : 7 + head_len])
    header.update(change)
    head = json.dumps(header, sort_keys=True).encode()
    body = data[:4] + bytes([version]) + struct.pack(">H", len(head)) + head + data[7 + head_len : -32]
    return body + hashlib.sha256(body).digest() if version >= 2 else body


def test_forged_and_corrupted_files_are_refused_before_decoding(codec_assets, tmp_path, capsys):
    _, _, ckpt, image = codec_assets
    good = tmp_path / "good.bin"
    main(["compress", str(image), "-o", str(good), "--checkpoint", str(ckpt)])
    data = good.read_bytes()
    out = tmp_path / "x.png"
    flipped = bytearray(data)
    flipped[len(data) - 40] ^= 0xFF  # a payload byte
    cases = {
        "flipped": (bytes(flipped), "checksum mismatch"),
        "huge": (_reheader(data, {"shape": [100, 100]}), "latent shape [100, 100] does not fit"),
        "negative_pad": (_reheader(data, {"pad": [-50000, 0, 0, 0]}), "pad [-50000, 0, 0, 0]"),
        "forged_size": (_reheader(data, {"height": 51}), "expected"),
        "over_limit": (_reheader(data, {"height": 100000, "width": 100000}), "over the limit"),
        "wrong_type": (_reheader(data, {"height": "50"}), "height '50'"),
        "streams": (_reheader(data, {"num_streams": 9}), "num_streams 9"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(content)
        code, err = run_codec_tool(["decompress", str(path), "-o", str(out), "--checkpoint", str(ckpt)], capsys)
        assert code == 2 and message in err and str(path) in err and "\n" not in err, (name, err)
    assert not out.exists()
    small = tmp_path / "limit.bin"
    small.write_bytes(data)
    code, err = run_codec_tool(["decompress", str(small), "-o", str(out), "--checkpoint", str(ckpt), "--max_pixels", "100"], capsys)
    assert code == 2 and "over the limit of 100" in err
    old = tmp_path / "v1.bin"  # format 1: no checksum; decodes, with a warning
    old.write_bytes(_reheader(data, {}, version=1))
    with pytest.warns(UserWarning, match="no checksum"):
        assert main(["decompress", str(old), "-o", str(out), "--checkpoint", str(ckpt)]) == 0
    assert read_image_tensor(out).shape == (3, 50, 70)
