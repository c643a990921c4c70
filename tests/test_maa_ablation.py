"""benchmarks/maa_ablation.sh and its table (benchmarks/ablation_table.py)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from icm.evaluation.make_tables import Bootstrap, Curve, bd_table

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("ablation_table", ROOT / "benchmarks" / "ablation_table.py")
ablation_table = importlib.util.module_from_spec(spec)
sys.modules["ablation_table"] = ablation_table
spec.loader.exec_module(ablation_table)

KEY = "map-voc07"
GROUPS = {"seen": ["a"], "unseen": ["b"]}


def curve(name, bpps, psnrs, seen, unseen):
    results = {"bpp": bpps, "psnr-rgb": psnrs, f"{KEY}:a": seen, f"{KEY}:b": unseen,
               f"{KEY}:seen-mean": seen, f"{KEY}:unseen-mean": unseen,
               f"{KEY}:all-mean": [(s + u) / 2 for s, u in zip(seen, unseen)]}
    return Curve(name, "checkpoint", [2, 5], results, groups=GROUPS)


def write_out(tmp_path):
    """An ablation folder as the script leaves it: rows, one transfer file, make_tables' BD CSV
    (written by make_tables' own bd_table, with a bootstrap whose resamples are given)."""
    control = curve("control", [0.30, 0.60], [28.0, 29.5], [0.50, 0.60], [0.40, 0.50])
    # +2 mAP points seen and +1 unseen at every rate; the same PSNR.
    maa = curve("defaults", [0.30, 0.60], [28.0, 29.5], [0.52, 0.62], [0.41, 0.51])
    rng = np.random.default_rng(0)
    values = {}
    for c, spread in ((control, 0.0), (maa, 0.004)):
        values[c.name] = {k: np.asarray(v)[None, :] + spread * rng.standard_normal((200, 2))
                          for k, v in c.results.items()}
    boot = Bootstrap(200, 0, 50, "pchip", values, [])
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "bd_map-voc07.csv").write_text(bd_table([control, maa], control, KEY, "pchip", boot).csv())
    (tmp_path / "rows.txt").write_text("control|defaults||0|0\ndefaults|defaults||1|0\n"
                                       "meta_off|meta-off|--meta off|1|0\n")
    (tmp_path / "transfer").mkdir()
    diff = {"maa-clean": {"estimate": 0.009, "low": -0.004, "high": 0.015},
            "maa-random": {"estimate": 0.020, "low": 0.005, "high": 0.024},
            "maa-smooth": {"estimate": 0.014, "low": 0.002, "high": 0.021}}
    transfer = {"mean_abs_delta_levels": {"maa": 5.49},
                "detectors": {"seen mean": {"maa-clean": {"estimate": 0.211, "low": 0.178, "high": 0.238}},
                              "unseen mean": diff}}
    (tmp_path / "transfer" / "defaults.json").write_text(json.dumps(transfer))
    (tmp_path / "share").mkdir()
    for q, share in ((2, 0.007), (5, 0.0114)):
        (tmp_path / "share" / f"defaults_q{q}.json").write_text(json.dumps({"share_mean": share}))
    (tmp_path / "share" / "defaults_seed1_q2.json").write_text(json.dumps({"share_mean": 0.5}))  # another row's
    return tmp_path


def test_table_has_one_line_per_row_with_transfer_and_bd_cells(tmp_path):
    text = ablation_table.ablation_table(write_out(tmp_path))
    lines = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert list(lines)[1:] == ["control", "defaults", "meta_off"]
    control, maa, meta_off = lines["control"], lines["defaults"], lines["meta_off"]
    assert control[4] == "" and "(reference)" in control[12]  # the control has no transfer: beta 0
    assert maa[4] == "5.49"
    assert maa[5] == "**+21.1 [+17.8, +23.8]**"  # seen maa - clean, excludes 0
    assert maa[6] == "+0.9 [-0.4, +1.5]"  # unseen maa - clean, does not
    assert maa[7] == "**+2.0 [+0.5, +2.4]**"
    seen_bd, unseen_bd, psnr_bd = maa[9], maa[10], maa[12]
    assert maa[13].rstrip(" |") == "q2 0.007, q5 0.011" and meta_off[13].strip(" |") == ""
    assert seen_bd.startswith("**+2.00 [") and unseen_bd.startswith("**+1.00 [")
    assert psnr_bd.startswith("+0.00")
    # meta_off was listed but has neither a transfer file nor an evaluated curve yet.
    assert meta_off[1] == "--meta off" and all(cell.strip(" |") == "" for cell in meta_off[4:])


def test_bd_cell_handles_missing_values_and_plain_intervals():
    assert ablation_table.bd_cell(None, "bd_quality", 100) == ""
    assert ablation_table.bd_cell({"bd_rate_percent": "nan"}, "bd_rate_percent", 1) == "n/a"
    row = {"bd_quality": "0.01", "bd_quality_low": "-0.002", "bd_quality_high": "0.02", "bd_quality_excludes_0": "no"}
    assert ablation_table.bd_cell(row, "bd_quality", 100) == "+1.00 [-0.20, +2.00]"


@pytest.mark.slow
def test_script_runs_rows_resumes_and_rejects_unknown_rows(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "ABL_OUT": str(tmp_path / "abl"), "ABL_IMAGES": "2",
           "ABL_STEPS": "1", "ABL_QUALITIES": "1 2", "ABL_VAL": "4", "ABL_TRANSFER": "2",
           "ABL_ROWS": "control defaults beta2"}
    script = ROOT / "benchmarks" / "maa_ablation.sh"
    bad = subprocess.run(["bash", str(script)], env={**env, "ABL_ROWS": "control nonsense"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown row 'nonsense'" in bad.stderr
    first = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    table = (tmp_path / "abl" / "ablation.md").read_text()
    for name in ("control", "defaults", "beta2"):
        assert f"| {name} |" in table
    assert "+" in table.split("| beta2 |")[1].split("\n")[0]  # beta2 has BD cells
    second = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "stage two at quality" not in second.stdout and "transfer on" not in second.stdout


def load_delta_share():
    spec = importlib.util.spec_from_file_location("delta_share", ROOT / "benchmarks" / "delta_share.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_delta_share_is_zero_against_itself_and_one_for_a_codec_that_adds_delta(tmp_path, codec_assets, monkeypatch):
    module = load_delta_share()
    from icm.io import read_image_tensor, write_image
    from icm.manifest import MANIFEST_NAME, manifest_record

    folder = tmp_path / "stage_one"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(3):
        x = rng.uniform(0.2, 0.8, (3, 64, 64)).astype(np.float32)
        write_image(tmp_path / f"x{i}.png", torch.from_numpy(x))
        write_image(folder / "images" / f"{i}.png", torch.from_numpy(x + rng.choice([-4, 4], x.shape) / 255))
        records.append(manifest_record(str(i), tmp_path / f"x{i}.png", f"images/{i}.png", 64, 64, 4.0, {}, {}))
    (folder / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    codec = codec_assets[2]
    same = module.delta_share(folder, codec, codec)
    assert same["images"] == 3 and same["share_mean"] == 0.0 and 3.9 < same["delta_rms_levels"] < 4.1

    real_decompress = module.decompress_image
    calls = {"n": 0}

    def decode_plus_delta(model, compressed):  # every other call is the codec's: add its image's delta
        out = real_decompress(model, compressed)
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            i = calls["n"] // 2 - 1
            out = out + read_image_tensor(folder / "images" / f"{i}.png")[None] - read_image_tensor(tmp_path / f"x{i}.png")[None]
        return out

    monkeypatch.setattr(module, "decompress_image", decode_plus_delta)
    assert module.delta_share(folder, codec, codec)["share_mean"] == pytest.approx(1.0)


def test_reproducible_share_of_a_replicate_is_its_common_part(tmp_path, capsys):
    """Two stage-one runs whose deltas share a part m and differ by +-n (n orthogonal to m):
    the replicate reproduces |m|^2 / (|m|^2 + |n|^2) of delta, exactly (integer levels)."""
    module = load_delta_share()
    from icm.io import write_image
    from icm.manifest import MANIFEST_NAME, manifest_record

    rng = np.random.default_rng(1)
    checker = np.indices((32, 32)).sum(0) % 2 * 2 - 1  # +-1, balanced: orthogonal to a constant
    folders = {"a": tmp_path / "a", "b": tmp_path / "b"}
    for f in folders.values():
        (f / "images").mkdir(parents=True)
    records = {"a": [], "b": []}
    for i in range(3):
        x = rng.integers(20, 200, (3, 32, 32)).astype(np.float32)
        write_image(tmp_path / f"x{i}.png", torch.from_numpy(x / 255))
        for name, sign in (("a", 1), ("b", -1)):
            if name == "b" and i == 2:
                continue  # an image missing from the replicate: left out with a warning
            write_image(folders[name] / "images" / f"{i}.png", torch.from_numpy((x + 4 + sign * 2 * checker) / 255))
            records[name].append(manifest_record(str(i), tmp_path / f"x{i}.png", f"images/{i}.png", 32, 32, 6.0, {}, {}))
    for name, folder in folders.items():
        (folder / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in records[name]))
    with pytest.warns(UserWarning, match="1 of the first 64 images"):
        result = module.main(["--augmented", str(folders["a"]), "--replicate", str(folders["b"])])
    rep = result["replicate"]
    assert rep["images"] == 2 and rep["missing"] == 1
    assert rep["reproducible_mean"] == pytest.approx((16 - 4) / (16 + 4))  # <m+n, m-n> / |m+n|^2
    assert rep["cosine_mean"] == pytest.approx(0.6) and "replicate reproduces" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        module.main(["--augmented", str(folders["a"])])  # nothing to measure
    assert "nothing to measure" in capsys.readouterr().err
