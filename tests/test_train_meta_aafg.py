"""Stage-one CLI and run loop (icm/aafg/train.py, icm/aafg/engine.py) with fake
detectors: output folder, resume, shards, unreadable images, unsafe ids."""

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import FakeDetector

from icm.aafg import engine
from icm.aafg import train as cli
from icm.aafg.meta_aafg import MetaAAFGConfig
from icm.cli import detector_weights
from icm.data.records import DetectionSample
from icm.io import read_image_tensor, read_jsonl, write_image
from icm.manifest import read_manifest_records

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FAST = ["--meta_steps", "2", "--inner_steps", "1", "--no_progress", "--device", "cpu"]


def fake_builder(name, classes=None, weights="default", device="cpu", **kwargs):
    return FakeDetector(name, seed=zlib.crc32(name.encode()) % 1000, classes=classes or ["a", "b"]).freeze()


def write_folder(root: Path, n: int, sizes=((24, 32),), seed: int = 0) -> list[Path]:
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        path = root / f"img{i:02d}.png"
        write_image(path, torch.randint(0, 256, (3, h, w), generator=gen).float() / 255)
        paths.append(path)
    return paths


def labelled_samples(root: Path, ids: list[str], size=(24, 32)) -> list[DetectionSample]:
    paths = write_folder(root, len(ids), sizes=(size,))
    return [
        DetectionSample(id=i, image_path=p, width=size[1], height=size[0],
                        boxes=np.array([[2, 2, 14, 12]], np.float32), labels=np.array([1]))
        for i, p in zip(ids, paths)
    ]


def run(samples, save, **kw):
    detectors = {n: fake_builder(n) for n in ("m0", "m1", "m2")}
    config = MetaAAFGConfig(meta_steps=2, inner_steps=1)
    return engine.run_stage_one(samples, detectors, config, save, progress=False, **kw)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_help_lists_every_flag_with_its_default():
    text = " ".join(cli.build_parser().format_help().split())
    for flag in ["--config", "--dataset", "--data_root", "--split", "--models", "--weights", "--epsilon",
                 "--meta_steps", "--inner_steps", "--alpha_in", "--alpha_out", "--direction", "--meta",
                 "--targets", "--batch_size", "--device", "--limit", "--shard", "--seed", "--save_path",
                 "--max_failures", "--pseudo_threshold", "--sample_models", "--diversity", "--smooth",
                 "--delta_scale", "--codec_aware", "--autocast"]:
        assert flag in text, flag
    for official in ["MGAA's official run: 16/255", "MGAA: 8", "MGAA: 6 of its 10", "MGAA: 0.7",
                     "MGAA: 15, sigma 2.33 px", "EXTENSION beyond the paper"]:
        assert official in text, official
    for default in ["(default: 8/255)", "(default: yolov3,faster_rcnn,centernet)", "(default: 10)",
                    "(default: helpful)", "(default: on)", "(default: gt)", "(default: ./augmented_data)",
                    "(default: bf16)", "None: 8 on CUDA, 1 on CPU"]:
        assert default in text, default
    args = cli.parse_args(["--epsilon", "8/255", "--weights", "yolov3=a.pt", "--shard", "1/4"])
    assert args.epsilon == pytest.approx(8 / 255) and args.models == cli.DEFAULT_MODELS
    assert detector_weights(args.weights) == {"yolov3": "a.pt"} and args.shard == (1, 4)


def test_cli_on_a_folder_writes_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("icm.detectors.registry.build_detector", fake_builder)
    src = tmp_path / "src"
    paths = write_folder(src, 4, sizes=((24, 32), (20, 20)))
    (src / "sub").mkdir()
    write_image(src / "sub" / "deep.png", read_image_tensor(paths[0]))
    out = tmp_path / "out"
    rc = cli.main(["--dataset", str(src), "--models", "m0,m1", "--targets", "pseudo", "--batch_size", "2",
                   "--out", str(out), *FAST])
    assert rc == 0
    records = read_jsonl(out / "manifest.jsonl")
    assert sorted(r["id"] for r in records) == ["img00", "img01", "img02", "img03", "sub/deep"]
    for r in records:
        assert set(r) == {"id", "source", "output", "width", "height", "linf", "loss_before", "loss_after"}
        assert Path(r["source"]).is_absolute() and r["output"].startswith("images/")
        src_img, out_img = read_image_tensor(r["source"]), read_image_tensor(out / r["output"])
        assert out_img.shape == src_img.shape == (3, r["height"], r["width"])
        linf = ((out_img - src_img) * 255).round().abs().max().item()
        assert linf == r["linf"] and 1 <= linf <= 8
        assert set(r["loss_before"]) == set(r["loss_after"]) == {"m0", "m1"}
    assert (out / "images" / "sub%2Fdeep.png").is_file()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["epsilon"] == pytest.approx(8 / 255) and config["meta"] == "on"
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert summary["done"] == 5 and summary["failed"] == 0
    assert summary["gradient_evaluations"] == 5 * 2 * (1 * 1 + 1)  # 5 images, T=2, K=1, |M|=2
    # A rerun has nothing left to do; a rerun with other settings is refused.
    again = ["--dataset", str(src), "--models", "m0,m1", "--targets", "pseudo", "--save_path", str(out), *FAST]
    assert cli.main(["--batch_size", "2", *again]) == 0
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert (summary["done"], summary["skipped"]) == (0, 5)
    with pytest.raises(SystemExit) as e:
        cli.main(["--epsilon", "4/255", *again])
    assert e.value.code == 2
    assert len(read_jsonl(out / "manifest.jsonl")) == 5


def test_gt_targets_helpful_lowers_and_harmful_raises_the_loss(tmp_path):
    samples = labelled_samples(tmp_path / "src", [f"s{i}" for i in range(4)])
    for direction, sign in [("helpful", -1), ("harmful", 1)]:
        save = tmp_path / direction
        detectors = {n: fake_builder(n) for n in ("m0", "m1")}
        config = MetaAAFGConfig(meta_steps=3, inner_steps=2, direction=direction)
        summary = engine.run_stage_one(samples, detectors, config, save, batch_size=4, progress=False)
        assert summary.done == 4
        for name in detectors:
            before = np.mean(summary.loss_before[name])
            after = np.mean(summary.loss_after[name])
            assert sign * (after - before) > 0, (direction, name)


def test_unsafe_ids_stay_inside_save_path(tmp_path):
    ids = ["../evil", "a/b", "..", ".hidden", "a\\b", "/abs/x", "x" * 400, "a%2Fb"]
    samples = labelled_samples(tmp_path / "src", ids)
    save = tmp_path / "deep" / "save"
    summary = run(samples, save)
    assert summary.done == len(ids)
    written = files_under(tmp_path / "deep")
    assert all(save in p.parents for p in written)
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == len(ids) and all(p.parent == save / "images" for p in pngs)
    assert all(not p.name.startswith(".") and len(p.name) < 200 for p in pngs)
    assert sorted(r["id"] for r in read_jsonl(save / "manifest.jsonl")) == sorted(ids)
    assert len({engine.safe_stem(i) for i in ids}) == len(ids)


@pytest.mark.parametrize("where", ["after_manifest", "before_manifest"])
def test_interrupted_run_resumes_and_writes_each_image_once(tmp_path, monkeypatch, where):
    samples = labelled_samples(tmp_path / "src", [f"s{i}" for i in range(6)])
    save = tmp_path / "out"
    calls = {"n": 0}

    def crash_after_three(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected crash")

    if where == "after_manifest":
        with pytest.raises(RuntimeError, match="injected"):
            run(samples, save, on_image_written=crash_after_three)
        assert len(read_jsonl(save / "manifest.jsonl")) == 3
    else:  # the third PNG is in place but its manifest line never came
        real_append = engine.append_jsonl

        def flaky_append(path, record):
            crash_after_three()
            real_append(path, record)

        monkeypatch.setattr(engine, "append_jsonl", flaky_append)
        with pytest.raises(RuntimeError, match="injected"):
            run(samples, save)
        monkeypatch.setattr(engine, "append_jsonl", real_append)
        assert len(read_jsonl(save / "manifest.jsonl")) == 2
        assert len(list((save / "images").glob("*.png"))) == 3

    rerun = run(samples, save)
    expected_skips = 3 if where == "after_manifest" else 2
    assert (rerun.skipped, rerun.done) == (expected_skips, 6 - expected_skips)
    records = read_jsonl(save / "manifest.jsonl")
    assert sorted(r["id"] for r in records) == [f"s{i}" for i in range(6)]
    assert sorted(p.name for p in files_under(save)) == ["manifest.jsonl"] + [f"s{i}.png" for i in range(6)]
    assert run(samples, save).skipped == 6  # a third run has nothing to do


def test_unreadable_image_is_counted_and_sets_the_exit_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("icm.detectors.registry.build_detector", fake_builder)
    src = tmp_path / "src"
    write_folder(src, 3)
    write_image(src / "broken.jpg", torch.rand(3, 64, 64))
    data = (src / "broken.jpg").read_bytes()
    (src / "broken.jpg").write_bytes(data[: -len(data) // 4])  # header fine, pixels truncated
    args = ["--dataset", str(src), "--models", "m0", "--targets", "pseudo", *FAST]
    with pytest.warns(UserWarning, match="broken"):
        assert cli.main([*args, "--save_path", str(tmp_path / "a")]) == 1
    out = capsys.readouterr()
    assert "failed 1" in out.out and "broken" in out.out and "--max_failures 0" in out.err
    assert len(read_jsonl(tmp_path / "a" / "manifest.jsonl")) == 3
    with pytest.warns(UserWarning, match="broken"):
        assert cli.main([*args, "--save_path", str(tmp_path / "b"), "--max_failures", "1"]) == 0


def test_shards_partition_the_dataset():
    items = list(range(11))
    shards = [engine.shard_samples(items, i, 3) for i in range(3)]
    assert sorted(sum(shards, [])) == items
    assert engine.combined_shard(None, 0, 1) == (0, 1)
    assert engine.combined_shard((1, 2), rank=2, world_size=4) == (6, 8)
    combined = [engine.shard_samples(items, *engine.combined_shard((m, 2), r, 2)) for m in range(2) for r in range(2)]
    assert sorted(sum(combined, [])) == items


def test_batches_hold_one_size():
    samples = [DetectionSample(id=str(i), image_path="x", width=10 + i % 2, height=10) for i in range(7)]
    batches = engine.equal_size_batches(samples, 3)
    assert [[s.id for s in b] for b in batches] == [["0", "2", "4"], ["6"], ["1", "3", "5"]]


def test_stage_one_batches_mix_sizes_grouped_by_shape():
    shapes = [(10, 20), (20, 10), (10, 21), (20, 10), (12, 24), (10, 20), (30, 30)]
    samples = [DetectionSample(id=str(i), image_path="x", width=w, height=h) for i, (h, w) in enumerate(shapes)]
    batches = engine.similar_size_batches(samples, 3)
    assert [[s.id for s in b] for b in batches] == [["1", "3", "6"], ["0", "5", "4"], ["2"]]


def test_mixed_size_batches_write_the_images_of_batch_1(tmp_path):
    sizes = ((24, 32), (20, 20), (31, 17))
    paths = write_folder(tmp_path / "src", 6, sizes=sizes)
    samples = [DetectionSample(id=p.stem, image_path=p, width=sizes[i % 3][1], height=sizes[i % 3][0],
                               boxes=np.array([[2, 2, 14, 12]], np.float32), labels=np.array([1]))
               for i, p in enumerate(paths)]
    alone = run(samples, tmp_path / "alone", batch_size=1)
    mixed = run(samples, tmp_path / "mixed", batch_size=4)
    assert alone.done == mixed.done == 6 and alone.gradient_evaluations == mixed.gradient_evaluations
    for p in paths:
        a, m = (read_image_tensor(tmp_path / d / "images" / f"{p.stem}.png") for d in ("alone", "mixed"))
        assert a.shape == read_image_tensor(p).shape and torch.equal(a, m)
    records = {r["id"]: r for r in read_jsonl(tmp_path / "mixed" / "manifest.jsonl")}
    assert [(records[p.stem]["height"], records[p.stem]["width"]) for p in paths] == list(sizes) * 2


# A process that does one shard of a folder (the run loop only: the CLI's --shard parsing is
# tested in-process below). Its fake detector duck-types Detector.loss/pseudo_targets so the
# process does not import the detector families (torchvision, ultralytics): seconds each.
DRIVER = """
import sys
import torch
from icm.data.folder import read_image_folder
from icm.aafg.engine import run_stage_one
from icm.aafg.meta_aafg import MetaAAFGConfig

class Fake(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)
        torch.manual_seed(seed)
        torch.nn.init.normal_(self.conv.weight)
        self.requires_grad_(False)

    def pseudo_targets(self, images):
        return [{{}} for _ in images]

    def loss(self, images, targets):
        return self.conv(images).square().mean()

index, count, src, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
summary = run_stage_one(read_image_folder(src).samples, {{"a": Fake(0), "b": Fake(1)}},
                        MetaAAFGConfig(meta_steps=2, inner_steps=1), out, targets="pseudo",
                        shard=(index, count), progress=False)
print(summary.done)
"""


def test_two_shards_in_separate_processes_cover_the_set_once(tmp_path):
    src = tmp_path / "src"
    write_folder(src, 10)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format())
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([PYTHON, str(driver), str(i), "2", str(src), str(out)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [r[0].split()[-1] for r in results] == ["5", "5"]
    ids = [r["id"] for _, _, r in read_manifest_records(out)]
    assert sorted(ids) == [f"img{i:02d}" for i in range(10)]  # all ten, none twice
    assert sorted(p.name for p in out.glob("manifest*")) == ["manifest.shard-0-of-2.jsonl", "manifest.shard-1-of-2.jsonl"]
    assert len(list((out / "images").glob("*.png"))) == 10
    # A rerun as one process finds every image done, whichever shard made it.
    rerun = subprocess.run([PYTHON, str(driver), "0", "1", str(src), str(out)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert rerun.stdout.split()[-1] == "0", rerun.stderr


def test_cli_shard_flag_and_torchrun_env(tmp_path, monkeypatch):
    monkeypatch.setattr("icm.detectors.registry.build_detector", fake_builder)
    src = tmp_path / "src"
    write_folder(src, 5)
    out = tmp_path / "out"
    args = ["--dataset", str(src), "--models", "m0", "--targets", "pseudo", "--save_path", str(out), *FAST]
    assert cli.main([*args, "--shard", "0/2"]) == 0
    assert sorted(r["id"] for r in read_jsonl(out / "manifest.shard-0-of-2.jsonl")) == ["img00", "img02", "img04"]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's second process: shard 1 of 2
    assert cli.main(args) == 0
    assert sorted(r["id"] for _, _, r in read_manifest_records(out)) == [f"img{i:02d}" for i in range(5)]
    assert (out / "summary.shard-0-of-2.json").is_file() and (out / "summary.shard-1-of-2.json").is_file()


def test_script_runs_from_its_folder_and_from_the_root():
    # The installed package (make install: editable) is what the thin script imports.
    procs = [
        subprocess.Popen([PYTHON, script, "--help"], cwd=REPO / where,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for where, script in [("MetaAAFG", "train_meta_aafg.py"), (".", "MetaAAFG/train_meta_aafg.py")]
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert "--meta_steps" in stdout and "--save_path" in stdout


def test_console_script_is_declared():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'icm-train-meta-aafg = "icm.aafg.train:main"' in pyproject


def test_bad_flags_give_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--dataset", str(tmp_path / "nothing_here"), "--save_path", str(tmp_path / "o"), *FAST])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit):
        cli.main(["--epsilon", "eight", *FAST])
    capsys.readouterr()
    # Numbers are checked by the flags' types (icm.cli): argparse's usage, then one error line.
    for flags, message in ((["--limit", "-1998"], "argument --limit: -1998: give at least 1"),
                           (["--limit", "0"], "argument --limit: 0: give at least 1"),
                           (["--limit", "2.5"], "argument --limit: not an integer: '2.5'"),
                           (["--alpha_in", "-1"], "argument --alpha_in: -1: give a number above 0"),
                           (["--epsilon", "0"], "argument --epsilon: 0: give a number above 0"),
                           (["--diversity", "1.5"], "argument --diversity: 1.5: give a number in [0, 1]")):
        with pytest.raises(SystemExit) as e:
            cli.main(["--dataset", "toy", "--save_path", str(tmp_path / "o"), *flags, *FAST])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.strip().splitlines()[-1].endswith(message), err
        assert not (tmp_path / "o").exists()


def test_cli_on_toy_data_with_a_real_detector_checkpoint(tmp_path, capsys):
    from icm.data import TOY_CLASSES, make_toy_dataset
    from icm.detectors import build_detector, save_detector_checkpoint

    toy = make_toy_dataset(tmp_path / "toy", train=3, val=1, size=64)
    ckpt = tmp_path / "toy_centernet.pt"
    save_detector_checkpoint(ckpt, build_detector("toy_centernet", classes=TOY_CLASSES,
                                                  num_classes=len(TOY_CLASSES), weights=None))
    out = tmp_path / "out"
    for direction in ("helpful", "harmful"):
        rc = cli.main(["--dataset", "TOY", "--data_root", str(toy), "--models", "toy_centernet",
                       "--weights", f"toy_centernet={ckpt}", "--meta_steps", "2", "--inner_steps", "2",
                       "--direction", direction, "--save_path", str(out / direction), "--no_progress"])
        assert rc == 0
    records = {d: read_jsonl(out / d / "manifest.jsonl") for d in ("helpful", "harmful")}
    assert len(records["helpful"]) == len(records["harmful"]) == 3
    for helpful, harmful in zip(records["helpful"], records["harmful"]):
        src = read_image_tensor(helpful["source"])
        for r in (helpful, harmful):
            img = read_image_tensor(out / ("helpful" if r is helpful else "harmful") / r["output"])
            assert img.shape == src.shape == (3, 64, 64)
            assert ((img - src) * 255).round().abs().max() <= 8
        before = helpful["loss_before"]["toy_centernet"]
        assert helpful["loss_after"]["toy_centernet"] < before < harmful["loss_after"]["toy_centernet"]


def test_cli_transfer_options_and_the_codec_aware_extension(tmp_path, monkeypatch, capsys):
    from compressai.models import ScaleHyperprior

    from icm.codec import save_codec_checkpoint

    monkeypatch.setattr("icm.detectors.registry.build_detector", fake_builder)
    src = tmp_path / "src"
    write_folder(src, 2, sizes=((24, 32),))
    codec_path = tmp_path / "codec.pth.tar"
    save_codec_checkpoint(codec_path, ScaleHyperprior(N=8, M=12), {"backbone": "bmshj2018-hyperprior",
                                                                  "quality": 1, "metric": "mse"})
    options = ["--sample_models", "2", "--diversity", "0.5", "--smooth", "3", "--delta_scale", "2"]
    common = ["--dataset", str(src), "--models", "m0,m1,m2", "--targets", "pseudo", *FAST]
    out = tmp_path / "out"
    assert cli.main([*common, *options, "--codec_aware", str(codec_path), "--save_path", str(out)]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["sample_models"], config["diversity"], config["smooth"], config["delta_scale"]) == (2, 0.5, 3, 2)
    assert config["codec_aware"] == str(codec_path)
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert summary["done"] == 2 and summary["gradient_evaluations"] == 2 * 2 * (1 * 1 + 1)  # |S_t| = 2
    # The same images without the codec differ: the extension changes the result.
    plain = tmp_path / "plain"
    assert cli.main([*common, *options, "--save_path", str(plain)]) == 0
    a, b = read_image_tensor(out / "images" / "img00.png"), read_image_tensor(plain / "images" / "img00.png")
    assert not torch.equal(a, b)
    # A rerun into the folder with another option is refused; bad values are one-line errors.
    capsys.readouterr()
    def with_option(flag, value):
        given = dict(zip(options[::2], options[1::2])) | {flag: value}
        return [*common, *[item for pair in given.items() for item in pair]]

    for flag, value, where, message in [("--smooth", "5", plain, "smooth=3"),
                                        ("--smooth", "4", tmp_path / "x", "odd kernel size"),
                                        ("--sample_models", "1", tmp_path / "x", "at least 2"),
                                        ("--codec_aware", str(tmp_path / "none.pth"), tmp_path / "x",
                                         "no such codec checkpoint")]:
        with pytest.raises(SystemExit) as e:
            cli.main([*with_option(flag, value), "--save_path", str(where)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_second_process_on_the_same_shard_is_refused_while_the_first_runs(tmp_path):
    from icm.io import FolderLockedError, held_lock

    samples = labelled_samples(tmp_path / "src", ["a", "b"])
    save = tmp_path / "out"
    with held_lock(save / ".lock.shard-0-of-1"):  # the first process, still at work
        with pytest.raises(FolderLockedError, match="give each process its own --shard I/N"):
            run(samples, save)
        assert not (save / "manifest.jsonl").exists()
        run(samples, save, shard=(1, 2))  # another shard has its own lock
    summary = run(samples, save)  # the first one has finished: free again
    assert summary.done + summary.skipped == 2 and not list(save.glob(".lock*"))
