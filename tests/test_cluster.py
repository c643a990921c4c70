"""The cluster path (icm/cluster.py, scripts/submit.py): chunking, the window of jobs in
flight, retries, and a real run on submitit's local executor."""

import subprocess
import sys
from pathlib import Path

import pytest

from icm.cluster import (
    ChunkReport,
    chunk_command,
    evaluation_shard_folder,
    local_gpu_slots,
    submit_chunks,
)
from icm.io import read_image_tensor
from icm.manifest import read_manifest_records

ROOT = Path(__file__).resolve().parent.parent


class ScriptedJob:
    def __init__(self, executor, chunk, fails):
        self.executor, self.chunk, self.fails, self.polls = executor, chunk, fails, 0

    def done(self):
        self.polls += 1
        return self.polls >= 2  # not done at the first look

    def result(self):
        self.executor.in_flight -= 1
        self.executor.gpus_in_use.pop(self.chunk, None)
        if self.fails:
            raise RuntimeError(f"chunk {self.chunk} crashed\nCUDA error: device lost")
        return 0


class ScriptedExecutor:
    """Chunk i fails its first ``failures[i]`` attempts."""

    def __init__(self, failures):
        self.failures, self.submitted, self.in_flight, self.most_in_flight = dict(failures), [], 0, 0
        self.commands, self.gpus_in_use = [], {}

    def update_parameters(self, **kwargs):
        self.gpus = kwargs["local_visible_gpus"]

    def submit(self, fn, stage, argv):
        chunk = int(argv[argv.index("--shard") + 1].split("/")[0])
        self.submitted.append(chunk)
        self.commands.append(argv)
        if hasattr(self, "gpus"):
            assert self.gpus not in self.gpus_in_use.values()  # a slot is never shared
            self.gpus_in_use[chunk] = self.gpus
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        fails = self.failures.get(chunk, 0) > 0
        self.failures[chunk] = self.failures.get(chunk, 0) - 1
        return ScriptedJob(self, chunk, fails)


def test_chunks_run_in_a_window_and_failed_ones_are_retried_until_the_limit():
    executor = ScriptedExecutor({1: 1, 3: 5})
    with pytest.warns(UserWarning, match="chunk 1 failed .*device lost; retrying"):
        report = submit_chunks(executor, "meta_aafg", ["--dataset", "toy"], chunks=5, parallel=2, retries=2,
                               poll_seconds=0, progress=False)
    assert executor.most_in_flight == 2
    assert sorted(executor.submitted) == [0, 1, 1, 2, 3, 3, 3, 4]
    assert report.attempts == {0: 1, 1: 2, 2: 1, 3: 3, 4: 1}
    assert report.failed == {3: "CUDA error: device lost"}
    # a retry takes over the lock a killed attempt may have left; first attempts do not
    retried = [chunk in executor.submitted[:k] for k, chunk in enumerate(executor.submitted)]
    assert [("--force_unlock" in c) for c in executor.commands] == retried and sum(retried) == 3
    slots = ScriptedExecutor({})
    submit_chunks(slots, "meta_aafg", ["--dataset", "toy"], chunks=6, parallel=8, poll_seconds=0, progress=False,
                  gpu_slots=local_gpu_slots(2, 5))
    assert local_gpu_slots(2, 5) == [[0, 1], [2, 3]] and slots.most_in_flight == 2 and len(slots.submitted) == 6
    assert local_gpu_slots(0, 8) is None
    with pytest.raises(ValueError, match="no GPU slots"):
        submit_chunks(slots, "meta_aafg", [], 1, 1, gpu_slots=local_gpu_slots(1, 0))
    assert "4 of 5 chunks done" in report.format() and "chunk 3 failed" in report.format()
    assert submit_chunks(ScriptedExecutor({}), "evaluate", ["--out", "x"], 3, 8, poll_seconds=0,
                         progress=False).failed == {}


def test_chunk_commands():
    assert chunk_command("meta_aafg", ["--dataset", "voc"], 2, 8) == [
        "--dataset", "voc", "--shard", "2/8", "--no_progress"]
    cmd = chunk_command("evaluate", ["--out", "runs/e", "--config", "c.yaml"], 0, 2)
    assert cmd[-2:] == ["--out", str(evaluation_shard_folder("runs/e", 0, 2))] and cmd.count("--out") == 1
    assert evaluation_shard_folder("runs/e", 0, 2) == Path("runs/e/shards/shard-0-of-2")
    with pytest.raises(ValueError, match="evaluate needs --out"):
        chunk_command("evaluate", ["--config", "c.yaml"], 0, 2)
    with pytest.raises(ValueError, match="--shard is set by the chunking"):
        chunk_command("meta_aafg", ["--shard", "0/2"], 0, 2)
    with pytest.raises(ValueError, match="unknown stage"):
        chunk_command("train", [], 0, 1)
    ChunkReport(1)  # constructible alone


def test_stage_one_on_submitits_local_executor_writes_what_one_process_writes(tmp_path):
    from icm.aafg.train import main as stage_one
    from icm.data import make_toy_dataset

    toy = make_toy_dataset(tmp_path / "toy", train=4, val=1, size=64)
    flags = ["--dataset", "toy", "--data_root", str(toy), "--models", "toy_centernet",
             "--weights", f"toy_centernet={ROOT / 'assets/toy/toy_centernet.pt'}",
             "--meta_steps", "2", "--inner_steps", "1", "--device", "cpu"]
    cluster_out, local_out = tmp_path / "cluster", tmp_path / "local"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts/submit.py"), "meta_aafg", "--executor", "local", "--chunks", "3",
         "--parallel", "2", "--gpus_per_job", "0", "--cpus_per_job", "1", "--poll_seconds", "0.5",
         "--logs", str(tmp_path / "logs"), "--no_progress", "--", *flags, "--save_path", str(cluster_out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "3 of 3 chunks done" in run.stdout
    assert stage_one([*flags, "--save_path", str(local_out), "--no_progress"]) == 0
    records = {r["id"]: r for _, _, r in read_manifest_records(cluster_out)}
    assert len(records) == 4 and len(list(cluster_out.glob("manifest.shard-*-of-3.jsonl"))) == 3
    for _, _, record in read_manifest_records(local_out):
        cluster_image = read_image_tensor(cluster_out / records[record["id"]]["output"])
        assert cluster_image.equal(read_image_tensor(local_out / record["output"]))


class InlineJob:
    def __init__(self, fn, args):
        try:
            self.value, self.error = fn(*args), None
        except Exception as e:  # noqa: BLE001 - handed back like submitit's job.result()
            self.value, self.error = None, e

    def done(self):
        return True

    def result(self):
        if self.error:
            raise self.error
        return self.value


class InlineExecutor:
    def submit(self, fn, *args):
        return InlineJob(fn, args)


def test_evaluation_chunks_are_merged_into_the_result_of_one_run(tmp_path, monkeypatch):
    import importlib.util

    from icm.data import make_toy_dataset
    from icm.evaluation.evaluate import main as evaluate
    from icm.io import read_json

    toy = make_toy_dataset(tmp_path / "toy", train=1, val=5, size=96)
    flags = ["--config", "", "--dataset", "toy", "--data_root", str(toy), "--split", "val", "--codecs", "jpeg=30,70",
             "--seen_detectors", "toy_centernet", "--weights", f"toy_centernet={ROOT / 'assets/toy/toy_centernet.pt'}",
             "--unseen_detectors", "", "--no_progress"]
    spec = importlib.util.spec_from_file_location("submit", ROOT / "scripts/submit.py")
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)
    monkeypatch.setattr(submit, "make_executor", lambda *args: InlineExecutor())
    assert submit.main(["evaluate", "--chunks", "2", "--no_progress", "--", *flags, "--out", str(tmp_path / "c")]) == 0
    assert evaluate([*flags, "--out", str(tmp_path / "one")]) == 0
    merged, whole = read_json(tmp_path / "c" / "jpeg.json"), read_json(tmp_path / "one" / "jpeg.json")
    for key, values in whole["results"].items():
        if "time" not in key:
            assert merged["results"][key] == pytest.approx(values, abs=1e-9), key
