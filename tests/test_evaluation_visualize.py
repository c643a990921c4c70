"""visualize.py: a stage-one folder, two tiny codecs and a tiny detector -> one PNG whose
panels are the right images with the right boxes; one-line errors on bad input."""

import json

import numpy as np
import pytest
import torch
from helpers import SquareFinder
from PIL import Image

from icm.codec import build_codec, save_codec_checkpoint
from icm.detectors import available, register
from icm.evaluation.image_codecs import learned_from_checkpoint
from icm.evaluation.visualize import PANELS, amplified_perturbation, build_rows, main, select_pairs

if "vis_test_square_finder" not in available():
    register("vis_test_square_finder")(lambda classes=None, weights="default", device="cpu", **kw:
                                       SquareFinder(classes or ["square"]))


def stage_one_folder(tmp_path, n=3, size=64):
    """A stage-one output folder: originals with a bright square, augmented = original + 2/255."""
    root = tmp_path / "augmented"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 60).astype(np.uint8)
        arr[10 + i : 34 + i, 8:28] = 240
        Image.fromarray(arr).save(tmp_path / f"orig{i}.png")
        Image.fromarray(arr + 2).save(root / "images" / f"img{i}.png")
        lines.append(json.dumps({"id": f"img{i}", "source": str(tmp_path / f"orig{i}.png"),
                                 "output": f"images/img{i}.png"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def tiny_codec(path, quality):
    save_codec_checkpoint(path, build_codec("bmshj2018-hyperprior", quality, pretrained=False, N=16, M=24),
                          {"backbone": "bmshj2018-hyperprior", "metric": "mse", "quality": quality})
    return path


def test_amplified_perturbation_is_grey_where_unchanged_and_clipped():
    original = torch.full((3, 2, 2), 0.4)
    augmented = original.clone()
    augmented[0, 0, 0] += 2 / 255
    augmented[1, 1, 1] -= 0.2
    out = amplified_perturbation(augmented, original, 10)
    assert out[2].eq(0.5).all()
    assert out[0, 0, 0].item() == pytest.approx(0.5 + 20 / 255, abs=1e-5)
    assert out[1, 1, 1].item() == 0.0  # 0.5 - 2.0, clipped


def test_rows_hold_real_round_trips_and_boxes(tmp_path):
    root = stage_one_folder(tmp_path)
    pairs = select_pairs(root, 2, None)
    assert [p.id for p in pairs] == ["img0", "img1"]
    assert [p.id for p in select_pairs(root, 2, ["img2", "img0"])] == ["img2", "img0"]
    anchor = learned_from_checkpoint(tiny_codec(tmp_path / "a.pth.tar", 1))
    maa = learned_from_checkpoint(tiny_codec(tmp_path / "m.pth.tar", 2))
    rows = build_rows(pairs, anchor, maa, {"sq": SquareFinder(["square"])}, score_threshold=0.5, amplify=10)
    assert len(rows) == 2
    row = rows[0]
    assert set(row.images) == set(PANELS)
    assert torch.allclose(row.images["perturbation"], torch.full((3, 64, 64), 0.5 + 20 / 255), atol=1e-5)
    # The decoded panels are the codec's real round trip of the original rounded to 8 bits (as
    # evaluate.py detects on it), titled with its rate.
    payload, num_bytes = anchor.encode(row.images["original"][None])
    decoded = row.images["anchor-decoded"]
    assert torch.allclose(decoded * 255, (decoded * 255).round(), atol=1e-3)
    assert (decoded - anchor.decode(payload)[0].clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
    assert row.titles["anchor-decoded"].startswith(f"anchor {8 * num_bytes / 64 / 64:.3f} bpp")
    assert "L-inf 2/255" in row.titles["augmented"]
    # The square finder sees the bright square (rows 10..33, columns 8..27) on the original.
    assert row.boxes["original"]["sq"]["boxes"].tolist() == [[8.0, 10.0, 28.0, 34.0]]
    assert "perturbation" not in row.boxes


def test_main_writes_a_png(tmp_path, capsys):
    root = stage_one_folder(tmp_path)
    out = tmp_path / "vis" / "visual.png"
    argv = ["--augmented_data", str(root), "--anchor", str(tiny_codec(tmp_path / "a.pth.tar", 1)),
            "--maa", str(tiny_codec(tmp_path / "m.pth.tar", 2)), "--detectors", "vis_test_square_finder",
            "--num_images", "2", "--out", str(out), "--dpi", "50", "--device", "cpu"]
    assert main(argv) == 0
    image = Image.open(out)
    assert image.format == "PNG" and image.width > image.height > 0  # 5 panels wide, 2 rows high
    assert not list(out.parent.glob(".*.tmp"))
    assert "wrote" in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
    root = stage_one_folder(tmp_path, n=1)
    codec = str(tiny_codec(tmp_path / "a.pth.tar", 1))
    common = ["--anchor", codec, "--maa", codec, "--detectors", "vis_test_square_finder", "--out", str(tmp_path / "v.png")]
    with pytest.raises(SystemExit) as e:
        main(["--augmented_data", str(root), "--ids", "nope", *common])
    assert e.value.code == 2 and "no image 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--augmented_data", str(tmp_path / "missing"), *common])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "missing" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["--augmented_data", str(root), "--anchor", codec, "--maa", codec])
    assert e.value.code == 2 and "--detectors" in capsys.readouterr().err
    assert not (tmp_path / "v.png").exists()


def test_detectors_and_weights_from_the_config_section(tmp_path):
    root = stage_one_folder(tmp_path, n=1)
    codec = str(tiny_codec(tmp_path / "a.pth.tar", 1))
    config = tmp_path / "run.yaml"
    config.write_text("visualize:\n  detectors: [vis_test_square_finder]\n"
                      "  weights: {vis_test_square_finder: none}\n  num_images: 1\n")
    out = tmp_path / "v.png"
    assert main(["--config", str(config), "--augmented_data", str(root), "--anchor", codec, "--maa", codec,
                 "--out", str(out), "--dpi", "40"]) == 0
    assert Image.open(out).format == "PNG"
