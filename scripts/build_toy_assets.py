"""Build the toy world's shipped assets: the toy set, the toy detectors and the toy codec.

    python scripts/build_toy_assets.py                      # everything still missing
    python scripts/build_toy_assets.py --only toy_yolov8,codec --jobs 2
    python scripts/build_toy_assets.py --only toy_fcos --minutes toy_fcos=20 --force

Steps (each skipped when its asset already exists, unless ``--force``):

1. ``data``: the synthetic toy set in ``data/toy`` (``icm.data.toy``).
2. one step per toy detector: its backbone family's body pretrained on the toy
   classification task (``scripts/pretrain_backbone.py`` into ``runs/toy_assets/pretrain/``,
   once per family), then ``scripts/train_detector.py`` from that body with photometric
   augmentation (``--no_pretrain`` / ``--no_augment``: the first toy world's recipe, from
   scratch) into ``runs/toy_assets/<name>/``, then ``assets/toy/<name>.pt`` (our fp16 checkpoint, written
   only when its validation mAP@0.5, re-measured on the shipped file, reaches ``--min_map``)
   and the card ``assets/toy/<name>.json``.
3. ``codec``: a ScaleHyperprior (bmshj2018-hyperprior, N=64, M=96) trained with
   ``Compression/train_compression.py`` on the toy train images at six qualities (CompressAI's
   MSE lambdas of q6..q1), each with a per-step cosine learning rate: the first (highest)
   quality from scratch, each next one fine-tuned from the one before (as the CompressAI
   zoo was trained). Assets ``assets/toy/codec_q<Q>.pth.tar`` (fp16 floats, fresh CDFs) and
   cards ``codec_q<Q>.json`` with the real bitstream rate and PSNR on the toy val split.
   The shipped codec is three rounds of this chain; the second continues the first's top
   quality, the third the second's, with the same command run on the files the round
   before shipped (its cards name the init and its sha256)::

       python scripts/build_toy_assets.py --only codec            # round one
       python scripts/build_toy_assets.py --only codec --force --threads 2 --refine_top_steps 0 \
           --codec_init assets/toy/codec_q6.pth.tar --steps codec_q6=5000   # rounds two and three

A step's budget is ``--steps NAME=N`` or else ``--minutes NAME=M`` turned into steps by a
short timing run on this machine, under its current load. The plan is stored with the run,
so an interrupted build resumes its trainings (``--resume``) with the same schedule.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from icm.cli import (
    exit_on_user_error,
    key_value,
    non_negative_int,
    non_negative_number,
    positive_int,
    probability,
)
from icm.config import REPO_ROOT, git_commit, parse_args_with_config, save_run_config
from icm.io import (
    atomic_torch_save,
    atomic_write_json,
    file_sha256,
    pid_alive,
    read_json,
    read_jsonl,
)

# Toy detectors: seen (stage one attacks them) first, then unseen; default batch size and
# training minutes each (the two-stage models learn slowest on CPU), and a peak learning
# rate where the family default (icm.detectors.training.FAMILY_DEFAULTS) learns too slowly.
# ``family``: the backbone family; one pretrained body per family (scripts/pretrain_backbone.py),
# shared by every detector of that family. No unseen detector shares a family with a seen one.
DETECTORS: dict[str, dict] = {
    "toy_faster_rcnn": {"role": "seen", "batch_size": 16, "minutes": 28.0, "family": "mobilenetv3-small"},
    "toy_centernet": {"role": "seen", "batch_size": 32, "minutes": 12.0, "family": "resnet18-quarter"},
    "toy_yolov3": {"role": "seen", "batch_size": 32, "minutes": 10.0, "family": "darknet-tiny"},
    "toy_yolov8": {"role": "unseen", "batch_size": 32, "minutes": 6.0, "family": "csp-c2f"},
    "toy_fcos": {"role": "unseen", "batch_size": 16, "minutes": 15.0, "family": "shufflenetv2"},
    "toy_ssdlite": {"role": "unseen", "batch_size": 32, "minutes": 18.0, "family": "mobilenetv3-large"},
    # The unseen task (instance segmentation): never in stage one's model set, not in the
    # unseen-detector mean; trained on the toy set's instance masks.
    "toy_mask_rcnn": {"role": "unseen task", "batch_size": 16, "minutes": 35.0, "family": "shufflenetv2"},
}
PRETRAIN_STEPS = 800  # scripts/pretrain_backbone.py defaults otherwise (8000 images of 64 px)
CODEC_QUALITIES = (6, 5, 4, 3, 2, 1)  # trained in this order: highest lambda from scratch, then down
CODEC_ARCH = {"backbone": "bmshj2018-hyperprior", "N": 64, "M": 96}
CODEC_BATCH_SIZE = 16
CODEC_LR_SCRATCH, CODEC_LR_FINETUNE = 1e-3, 3e-4
# Steps (batch 16, cosine from the lr to 1% of it): a step count, not minutes, so that every
# machine builds the same codec; about 45 + 5 x 7 + 6 minutes on 2 cores (the last: the highest
# quality once more, fine-tuned from the second, --refine_top_steps, because the later links of
# the chain train longer and pass it).
CODEC_STEPS_SCRATCH, CODEC_STEPS_FINETUNE = 5000, 800
PID_FILE = "train.pid"
CDF_BUFFERS = ("._quantized_cdf", "._cdf_length", "._offset")
TIMING_STEPS = 8  # steps of the timing run (the first two are left out of the rate)
VAL_METRIC = "VOC2012 all-point AP at IoU 0.5, mean over classes (icm.voc_eval.voc_map)"
_print_lock = threading.Lock()


def log(message: str) -> None:
    """One timestamped line on stdout (safe from worker threads)."""
    with _print_lock:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_toy_assets.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="YAML config (top-level keys and a toy_assets: section)")
    p.add_argument("--only", help="comma-separated steps to build: data, codec, or detector names "
                   f"({', '.join(DETECTORS)}); default all")
    p.add_argument("--force", action="store_true", help="rebuild the selected assets (and their runs) even when they exist")
    p.add_argument("--steps", type=key_value, action="append", default=[],
                   help="NAME=N training steps for a detector or codec_q<Q> (repeatable); overrides --minutes; "
                   f"codec defaults: the first {CODEC_STEPS_SCRATCH}, each next one {CODEC_STEPS_FINETUNE}")
    p.add_argument("--minutes", type=key_value, action="append", default=[],
                   help="NAME=M training minutes (turned into steps by a timing run); defaults: "
                   + ", ".join(f"{k}={v['minutes']:g}" for k, v in DETECTORS.items())
                   + "; a codec_q<Q> given here is timed instead of taking its default steps")
    p.add_argument("--jobs", type=positive_int, default=2, help="trainings run at the same time")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per training")
    p.add_argument("--no_pretrain", action="store_true",
                   help="detectors from random init (the first toy world's recipe); default: each body "
                   "pretrained on the toy classification task first")
    p.add_argument("--no_augment", action="store_true",
                   help="no photometric augmentation in detector training (the first toy world's recipe)")
    p.add_argument("--pretrain_steps", type=positive_int, default=PRETRAIN_STEPS, help="steps of each body's pretraining")
    p.add_argument("--min_map", type=probability, default=0.5, help="validation mAP@0.5 a detector needs to be shipped")
    p.add_argument("--max_extensions", type=non_negative_int, default=2,
                   help="continuations of a detector run whose best mAP@0.5 (mask AP@0.5 for the unseen-task "
                   "model) is below --min_map")
    p.add_argument("--extend_minutes", type=non_negative_number, default=10.0, help="training minutes of each continuation")
    p.add_argument("--refine_top_steps", type=non_negative_int, default=600,
                   help="steps of the last codec run: the highest quality fine-tuned from the second (0: none)")
    p.add_argument("--codec_init", default=None,
                   help="warm start of the first (highest) codec quality from this checkpoint, e.g. the shipped "
                   "assets/toy/codec_q6.pth.tar to train it further (recorded with its SHA-256 in the card); "
                   "None: from scratch")
    p.add_argument("--qualities", default=",".join(map(str, CODEC_QUALITIES)),
                   help="codec qualities (CompressAI MSE lambdas), highest first: it is trained from scratch")
    p.add_argument("--data_root", default=str(REPO_ROOT / "data" / "toy"), help="toy set folder")
    p.add_argument("--train_images", type=positive_int, default=2000, help="toy training images")
    p.add_argument("--val_images", type=positive_int, default=300, help="toy validation images")
    p.add_argument("--image_size", type=positive_int, default=128, help="toy image side in pixels")
    p.add_argument("--assets", default=str(REPO_ROOT / "assets" / "toy"), help="where the assets go")
    p.add_argument("--runs", default=str(REPO_ROOT / "runs" / "toy_assets"), help="where the training runs go")
    p.add_argument("--seed", type=int, default=0, help="seed of the toy set, the pretraining and every training")
    return p


# ----------------------------------------------------------------------------- helpers


def wait_for_other_build(run_dir: Path, name: str) -> None:
    """Wait while another build's training of this run is alive (its ``train.pid``)."""
    pid_path = run_dir / PID_FILE
    if not pid_path.is_file():
        return
    pid = int(pid_path.read_text().strip() or 0)
    if pid and pid != os.getpid() and pid_alive(pid):
        log(f"{name}: training already running (pid {pid}); waiting for it")
        while pid_alive(pid):
            time.sleep(15)


def run_logged(cmd: list[str], log_path: Path, threads: int, pid_path: Path | None = None) -> None:
    """Run ``cmd`` with ``threads`` torch threads, output appended to ``log_path``; its pid
    is kept in ``pid_path`` while it runs (so a second build waits instead of clashing)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        if pid_path is not None:
            pid_path.write_text(str(process.pid))
        code = process.wait()
    if pid_path is not None:
        pid_path.unlink(missing_ok=True)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed with status {code}; see {log_path}")


def seconds_per_step(records: list[dict], step_key: str, time_key: str) -> float:
    """Training speed from a timing run's log lines (the first two steps are warm-up)."""
    timed = [(r[step_key], r[time_key]) for r in records if step_key in r and time_key in r]
    (s0, t0), (s1, t1) = timed[min(1, len(timed) - 2)], timed[-1]
    return (t1 - t0) / max(1, s1 - s0)


def timing_run(name: str, args: argparse.Namespace, batch_size: int, time_key: str,
               command: Callable[[Path], list[str]], split: str | None = None) -> float:
    """Seconds per step of ``command(timing_dir)`` (a :data:`TIMING_STEPS`-step training run in
    ``runs/timing/<name>``, removed afterwards), from its log lines (of ``split`` only, if given)."""
    timing_dir = Path(args.runs) / "timing" / name
    shutil.rmtree(timing_dir, ignore_errors=True)
    run_logged(command(timing_dir), timing_dir.parent / f"{name}.log", args.threads)
    records = [r for r in read_jsonl(timing_dir / "log.jsonl") if split is None or r.get("split") == split]
    rate = seconds_per_step(records, "step", time_key)
    shutil.rmtree(timing_dir)
    log(f"{name}: {rate:.2f} s/step at batch {batch_size} ({args.threads} thread(s), current load)")
    return rate


def wall_minutes(records: list[dict], time_key: str) -> float:
    """Training minutes from a log whose clock restarts at every resume (sum of segments)."""
    total, segment = 0.0, 0.0
    for r in records:
        if time_key not in r:
            continue
        if r[time_key] < segment:
            total += segment
        segment = r[time_key]
    return round((total + segment) / 60, 2)


@dataclass
class Budget:
    steps: dict[str, int]
    minutes: dict[str, float]

    def plan(self, name: str, default_minutes: float, time_one_step) -> dict:
        """Steps for ``name``: given, or minutes over the measured seconds per step."""
        if name in self.steps:
            return {"steps": self.steps[name], "minutes_budget": None, "seconds_per_step": None}
        minutes = self.minutes.get(name, default_minutes)
        rate = time_one_step()
        return {"steps": max(10, int(minutes * 60 / rate)), "minutes_budget": minutes, "seconds_per_step": round(rate, 3)}


# ----------------------------------------------------------------------------- data


def build_data(args: argparse.Namespace) -> None:
    """Step 1: the toy set (a complete set with the same parameters is kept as is)."""
    from icm.data.toy import make_toy_dataset

    root = make_toy_dataset(args.data_root, train=args.train_images, val=args.val_images, size=args.image_size, seed=args.seed)
    log(f"data: toy set ready at {root}")


# ----------------------------------------------------------------------------- detectors


def pretrained_body(name: str, args: argparse.Namespace) -> Path:
    """The pretrained body of ``name``'s backbone family (pretrained now if missing)."""
    family = DETECTORS[name]["family"]
    path = Path(args.runs) / "pretrain" / f"{family}.pt"
    wait_for_other_build(path.parent / family, name)
    if not path.is_file():
        log(f"{name}: pretraining the {family} body ({args.pretrain_steps} steps; log {path.with_suffix('.log')})")
        (path.parent / family).mkdir(parents=True, exist_ok=True)
        run_logged([sys.executable, str(REPO_ROOT / "scripts" / "pretrain_backbone.py"), "--model", name,
                    "--out", str(path), "--steps", str(args.pretrain_steps), "--seed", str(args.seed)],
                   path.with_suffix(".log"), args.threads, path.parent / family / PID_FILE)
    return path


def train_detector_cmd(name: str, args: argparse.Namespace, out: Path, batch_size: int, steps: int,
                       val: bool = True, val_every: int = 1, init: str | None = None, lr: float | None = None,
                       recipe: dict | None = None) -> list[str]:
    recipe = recipe or {}
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "train_detector.py"), "--model", name,
           "--dataset", "toy", "--data_root", args.data_root, "--weights", init or "none",
           "--batch_size", str(batch_size), "--max_steps", str(steps), "--seed", str(args.seed),
           "--val_split", "val" if val else "none", "--val_every", str(val_every),
           "--log_every", "1" if not val else "10", "--checkpoint_every", "200", "--no_progress",
           "--out", str(out)]
    cmd += ["--augment"] if recipe.get("augment") else []
    cmd += ["--init_backbone", recipe["init_backbone"]] if recipe.get("init_backbone") and not init else []
    return cmd + (["--lr", str(lr)] if lr is not None else [])


def train_stage(name: str, args: argparse.Namespace, stage_dir: Path, plan: dict) -> None:
    """Run (or resume) one training of ``plan`` in ``stage_dir`` unless it has finished."""
    if (stage_dir / "summary.json").is_file():
        return
    cmd = train_detector_cmd(name, args, stage_dir, plan["batch_size"], plan["steps"], val_every=plan["val_every"],
                             init=plan.get("init"), lr=plan.get("lr"), recipe=plan.get("recipe"))
    resume = (stage_dir / "last.pt").is_file()
    log(f"{name}: {'resuming' if resume else 'training'} {plan['steps']} steps at batch {plan['batch_size']}"
        f"{' from ' + plan['init'] if plan.get('init') else ''} (log {stage_dir / 'train.log'})")
    run_logged(cmd + (["--resume"] if resume else []), stage_dir / "train.log", args.threads, stage_dir / PID_FILE)


def build_detector_asset(name: str, args: argparse.Namespace, budget: Budget) -> str:
    """Step 2 for one detector: train (or resume) in its run folder; while the best stage's
    shipping measure (:func:`stage_score`) is below ``--min_map``, continue from the best
    checkpoint (``extend<k>/``, a warm restart at a third of the peak rate, up to
    ``--max_extensions`` times); then ship it."""
    from icm.detectors import read_detector_checkpoint
    from icm.detectors.training import FAMILY_DEFAULTS

    spec = DETECTORS[name]
    run_dir = Path(args.runs) / name
    wait_for_other_build(run_dir, name)
    if args.force and (run_dir / "plan.json").is_file():
        shutil.rmtree(run_dir)  # a run this script made (it holds our plan.json)
    plan_path = run_dir / "plan.json"
    if plan_path.is_file():
        plan = read_json(plan_path)
    else:
        recipe = {"augment": not args.no_augment,
                  "init_backbone": None if args.no_pretrain else str(pretrained_body(name, args))}

        def time_one_step() -> float:
            return timing_run(name, args, spec["batch_size"], "seconds", lambda timing_dir: train_detector_cmd(
                name, args, timing_dir, spec["batch_size"], TIMING_STEPS, val=False, recipe=recipe))

        plan = {"batch_size": spec["batch_size"], "recipe": recipe,
                **budget.plan(name, spec["minutes"], time_one_step)}
        if "lr" in spec:
            plan["lr"] = spec["lr"]
        steps_per_epoch = math.ceil(args.train_images / plan["batch_size"])
        plan["val_every"] = max(1, round(plan["steps"] / steps_per_epoch / 6))  # about six validations
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_path, plan)
    train_stage(name, args, run_dir, plan)
    stages = [run_dir]
    for k in range(1, args.max_extensions + 1):
        best_map = stage_score(name, stages[-1], args)
        if best_map >= args.min_map:
            break
        stage_dir = run_dir / f"extend{k}"
        wait_for_other_build(stage_dir, name)
        if (stage_dir / "plan.json").is_file():
            extension = read_json(stage_dir / "plan.json")
        else:
            init = stages[-1] / "best.pt"
            family = read_detector_checkpoint(init)["family"]
            records = read_jsonl(stages[-1] / "log.jsonl")
            rate = wall_minutes(records, "seconds") * 60 / max(1, read_json(stages[-1] / "summary.json")["steps"])
            steps = max(10, int(args.extend_minutes * 60 / rate))
            steps_per_epoch = math.ceil(args.train_images / plan["batch_size"])
            extension = {"batch_size": plan["batch_size"], "recipe": plan.get("recipe"),
                         "steps": steps, "minutes_budget": args.extend_minutes,
                         "seconds_per_step": round(rate, 3), "val_every": max(1, round(steps / steps_per_epoch / 4)),
                         "init": str(init), "lr": FAMILY_DEFAULTS[family][1] / 3}
            stage_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(stage_dir / "plan.json", extension)
            log(f"{name}: best val {score_name(name)} {best_map:.4f} < {args.min_map}; extension {k}")
        train_stage(name, args, stage_dir, extension)
        stages.append(stage_dir)
    return ship_detector(name, stages, plan, args)


def score_name(name: str) -> str:
    """What decides whether ``name`` ships: mask AP@0.5 for the unseen task, else box mAP@0.5."""
    return "mask AP@0.5" if DETECTORS[name]["role"] == "unseen task" else "mAP@0.5"


def stage_score(name: str, stage_dir: Path, args: argparse.Namespace) -> float:
    """The shipping measure of a finished stage's best checkpoint: its best validation box
    mAP@0.5 from training, or for the unseen-task model its mask AP@0.5 on the toy val split:
    a Mask R-CNN whose boxes pass can still have masks below the target, and extending on
    box mAP alone would then stop too early."""
    if DETECTORS[name]["role"] != "unseen task":
        return read_json(stage_dir / "summary.json")["best_map50"] or 0.0
    return stage_mask_ap(name, stage_dir, args)["mask_ap50"]


def stage_mask_ap(name: str, stage_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """``{"mask_ap50", "mask_map"}`` of a stage's best checkpoint on the toy val split,
    measured once and kept in the stage's ``mask_ap.json``."""
    cache = stage_dir / "mask_ap.json"
    if not cache.is_file():
        from icm.data import load_dataset
        from icm.detectors import build_detector

        detector = build_detector(name, weights=str(stage_dir / "best.pt"))
        ap50, ap = mask_ap(detector, load_dataset("toy", split="val", root=args.data_root))
        atomic_write_json(cache, {"mask_ap50": ap50, "mask_map": ap})
        log(f"{name}: {stage_dir.name}: val mask AP@0.5 {ap50:.4f}, mask AP {ap:.4f}")
    return read_json(cache)


def mask_ap(detector, val_set) -> tuple[float, float]:
    """(mask AP@0.5, mask AP@[.5:.95]) of ``detector`` on ``val_set`` against its masks file."""
    from icm.evaluation.coco_eval import image_ids_of, mask_ground_truth_for
    from icm.evaluation.engine import detection_metrics, prediction_to_numpy
    from icm.io import read_image_tensor

    predictions = []
    for start in range(0, len(val_set), 16):
        images = [read_image_tensor(s.image_path) for s in val_set.samples[start : start + 16]]
        predictions += [prediction_to_numpy(p) for p in detector.predict(images)]
    truth = mask_ground_truth_for(read_json(val_set.mask_file), val_set.samples,
                                  image_ids_of(val_set, val_set.samples), str(val_set.mask_file))
    results, _, _ = detection_metrics(val_set, {detector.name: predictions}, mask_ground_truth=truth)
    return results[f"mask-ap50-coco:{detector.name}"], results[f"mask-map-coco:{detector.name}"]


def ship_detector(name: str, stages: list[Path], plan: dict, args: argparse.Namespace) -> str:
    """Re-measure the best checkpoint of all stages as it will be shipped (fp16) and write
    ``<name>.pt`` and its card ``<name>.json``."""
    from icm.data import load_dataset
    from icm.detectors import build_detector, read_detector_checkpoint
    from icm.detectors.training import evaluate_map50

    asset, card_path = Path(args.assets) / f"{name}.pt", Path(args.assets) / f"{name}.json"
    summaries = [read_json(stage / "summary.json") for stage in stages]
    best_stage = max(range(len(stages)), key=lambda i: stage_score(name, stages[i], args))
    run_dir = stages[best_stage]
    best = run_dir / "best.pt"
    checkpoint = read_detector_checkpoint(best)
    detector = build_detector(name, weights=str(best))
    val_set = load_dataset("toy", split="val", root=args.data_root)
    map50 = evaluate_map50(detector, val_set, torch.device("cpu"), batch_size=16)
    card = {
        **checkpoint["card"],
        "name": name,
        "architecture": name,
        "role": DETECTORS[name]["role"],
        "backbone_family": DETECTORS[name]["family"],
        "recipe": plan.get("recipe") or {"augment": False, "init_backbone": None},
        "classes": list(checkpoint["classes"]),
        # Steps up to the shipped (best) checkpoint, earlier stages included.
        "steps": sum(summary["steps"] for summary in summaries[:best_stage]) + checkpoint["card"]["steps"],
        "stages": [{"steps": summary["steps"], "best_val_map50": summary["best_map50"],
                    "lr": summary["settings"]["lr"], "init": "none" if i == 0 else f"best.pt of stage {i - 1}"}
                   for i, summary in enumerate(summaries[: best_stage + 1])],
        "batch_size": plan["batch_size"],
        "epochs": round((sum(summary["steps"] for summary in summaries[:best_stage]) + checkpoint["card"]["steps"])
                        * plan["batch_size"] / args.train_images, 2),
        "minutes": round(sum(wall_minutes(read_jsonl(stage / "log.jsonl"), "seconds") for stage in stages[: best_stage + 1]), 2),
        "val_map50": round(map50, 4),
        "val_map50_training": checkpoint["card"].get("val_map50"),
        "val_metric": VAL_METRIC,
        "val_images": len(val_set),
        "parameters": sum(p.numel() for p in detector.parameters()),
        "dtype": "float16",
        "git_commit": checkpoint["card"].get("git_commit") or git_commit(),
    }
    if best_stage > 0:  # an extension starts from weights: the pretrained body is the first stage's
        card["init_backbone"] = read_detector_checkpoint(stages[0] / "best.pt")["card"].get("init_backbone")
    if DETECTORS[name]["role"] == "unseen task":  # instance masks: the task's own metric decides
        masks = stage_mask_ap(name, run_dir, args)  # the same best.pt the stage was scored on
        mask_ap50, mask_map = masks["mask_ap50"], masks["mask_map"]
        card.update(val_mask_ap50=round(mask_ap50, 4), val_mask_map=round(mask_map, 4),
                    val_mask_metric="COCO mask AP@0.5 and AP@[.5:.95] (faster-coco-eval / pycocotools)")
        if mask_ap50 < args.min_map:
            log(f"{name}: NOT shipped: val mask AP@0.5 {mask_ap50:.4f} < {args.min_map} after {card['steps']} steps")
            return f"{name}: below target (mask AP@0.5 {mask_ap50:.4f})"
    if map50 < args.min_map:
        log(f"{name}: NOT shipped: val mAP@0.5 {map50:.4f} < {args.min_map} after {card['steps']} steps; "
            f"continue with --only {name} --max_extensions {args.max_extensions + 1}")
        return f"{name}: below target ({map50:.4f})"
    atomic_torch_save(asset, {**checkpoint, "card": card})
    card.update(file=asset.name, file_size_bytes=asset.stat().st_size, sha256=file_sha256(asset))
    atomic_write_json(card_path, card)
    log(f"{name}: shipped {asset} ({card['file_size_bytes'] / 1e6:.2f} MB), val mAP@0.5 {map50:.4f}, "
        f"{card['steps']} steps, {card['minutes']} min")
    return f"{name}: {map50:.4f}"


# ----------------------------------------------------------------------------- codec


def codec_folders(args: argparse.Namespace) -> tuple[Path, Path]:
    """Plain image folders of the toy train and val images (links into the toy set)."""
    from icm.data import link_split_images

    return tuple(link_split_images("toy", split, Path(args.runs) / "codec_data" / split, args.data_root)
                 for split in ("train", "val"))


def train_codec_cmd(quality: int, args: argparse.Namespace, train_dir: Path, val_dir: Path | None,
                    save_dir: Path, steps: int, init: str | None) -> list[str]:
    cmd = [sys.executable, str(REPO_ROOT / "Compression" / "train_compression.py"),
           "--dataset", str(train_dir), "--backbone", CODEC_ARCH["backbone"], "--quality", str(quality),
           "--patch_size", str(args.image_size), "--batch_size", str(CODEC_BATCH_SIZE), "--num_workers", "0",
           "--beta", "0", "--max_steps", str(steps), "--epochs", "100000", "--seed", str(args.seed),
           "--scheduler", "cosine", "--no_tensorboard", "--save_every", "200", "--save_dir", str(save_dir)]
    cmd += ["--val_dataset", str(val_dir), "--log_every", "10"] if val_dir else ["--val_fraction", "0", "--log_every", "1"]
    if init is None:
        cmd += ["--no_pretrained", "--N", str(CODEC_ARCH["N"]), "--M", str(CODEC_ARCH["M"]), "--lr", str(CODEC_LR_SCRATCH)]
    else:
        cmd += ["--checkpoint", init, "--lr", str(CODEC_LR_FINETUNE)]
    return cmd


def build_codec_assets(args: argparse.Namespace, budget: Budget) -> str:
    """Step 3: the codec at each quality, highest first (from scratch), each next one
    fine-tuned down from the one above; then the highest once more, fine-tuned up from the
    second (``<name>-refine``): the chain's later links train longer and would otherwise
    pass the highest quality in PSNR."""
    qualities = [int(q) for q in args.qualities.split(",")]
    train_dir, val_dir = codec_folders(args)
    previous: Path | None = Path(args.codec_init) if args.codec_init else None
    results = []
    for quality in qualities:
        name = f"codec_q{quality}"
        asset = Path(args.assets) / f"{name}.pth.tar"
        run_dir = Path(args.runs) / name
        if asset.is_file() and not args.force:
            log(f"{name}: {asset} exists; skipped")
            previous = run_dir / "best.pth.tar" if (run_dir / "best.pth.tar").is_file() else asset
            continue
        results.append(train_and_ship_codec(name, quality, run_dir, asset, previous, args, budget, train_dir, val_dir))
        previous = run_dir / "best.pth.tar"  # fp32: the next quality starts from the unrounded weights
    if len(qualities) > 1 and args.refine_top_steps > 0:
        name = f"codec_q{qualities[0]}"
        run_dir = Path(args.runs) / f"{name}-refine"
        second = Path(args.runs) / f"codec_q{qualities[1]}" / "best.pth.tar"
        if results and (run_dir / "plan.json").is_file():
            shutil.rmtree(run_dir)  # the second quality was retrained: start again from it
        if not (run_dir / "shipped").is_file():
            results.append(train_and_ship_codec(name, qualities[0], run_dir, Path(args.assets) / f"{name}.pth.tar",
                                                second, args, budget, train_dir, val_dir, steps=args.refine_top_steps))
            (run_dir / "shipped").touch()
    return "; ".join(results) or "codec: all qualities exist"


def train_and_ship_codec(name: str, quality: int, run_dir: Path, asset: Path, init_path: Path | None,
                         args: argparse.Namespace, budget: Budget, train_dir: Path, val_dir: Path,
                         steps: int | None = None) -> str:
    """Train (or resume) one codec run in ``run_dir``, from scratch or from ``init_path``, and ship it."""
    wait_for_other_build(run_dir, name)
    if args.force and (run_dir / "plan.json").is_file():
        shutil.rmtree(run_dir)  # a run this script made (it holds our plan.json)
    init = None if init_path is None else str(init_path)
    plan_path = run_dir / "plan.json"
    if plan_path.is_file():
        plan = read_json(plan_path)
    else:
        def time_one_step() -> float:
            return timing_run(name, args, CODEC_BATCH_SIZE, "time", lambda timing_dir: train_codec_cmd(
                quality, args, train_dir, None, timing_dir, TIMING_STEPS, init), split="train")

        plan = {"init": init, "lr": CODEC_LR_SCRATCH if init is None else CODEC_LR_FINETUNE}
        if init is not None:
            plan["init_sha256"] = file_sha256(Path(init))
        if steps is None and name not in budget.minutes:
            steps = budget.steps.get(name, CODEC_STEPS_SCRATCH if init is None else CODEC_STEPS_FINETUNE)
        if steps is not None:
            plan["steps"] = steps
        else:
            plan.update(budget.plan(name, budget.minutes[name], time_one_step))
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_path, plan)
    records = read_jsonl(run_dir / "log.jsonl") if (run_dir / "log.jsonl").is_file() else []
    if not any(r.get("split") == "final" for r in records):
        cmd = train_codec_cmd(quality, args, train_dir, val_dir, run_dir, plan["steps"], plan["init"])
        if (run_dir / "last.pth.tar").is_file():
            for flag, takes_value in (("--no_pretrained", False), ("--N", True), ("--M", True), ("--checkpoint", True)):
                if flag in cmd:
                    j = cmd.index(flag)
                    del cmd[j : j + 1 + takes_value]
            cmd += ["--resume", str(run_dir / "last.pth.tar")]
        log(f"{name}: {'resuming' if '--resume' in cmd else 'training'} {plan['steps']} steps "
            f"({'from scratch' if plan['init'] is None else 'fine-tuning ' + plan['init']}; log {run_dir / 'train.log'})")
        run_logged(cmd, run_dir / "train.log", args.threads, run_dir / PID_FILE)
    return ship_codec(name, quality, run_dir, asset, plan, args)


def codec_run_name(init: str) -> str:
    """``codec_q4`` for ``runs/toy_assets/codec_q4/best.pth.tar`` or ``assets/toy/codec_q4.pth.tar``."""
    path = Path(init)
    return path.parent.name if path.name == "best.pth.tar" else path.name.removesuffix(".pth.tar")


def ship_codec(name: str, quality: int, run_dir: Path, asset: Path, plan: dict, args: argparse.Namespace) -> str:
    """Write the fp16 codec asset (fresh CDFs) and its card with the real rate and PSNR."""
    from icm.codec import (
        CHECKPOINT_FORMAT,
        compress_image,
        decompress_image,
        lambda_for,
        load_codec,
        real_bpp,
    )
    from icm.data import load_dataset
    from icm.evaluation.metrics import psnr
    from icm.io import read_image_tensor

    model, checkpoint = load_codec(run_dir / "best.pth.tar")
    # Parameters in fp16; the entropy coders' CDF tables (a quarter of the file) are stored
    # empty: load_codec rebuilds them with update(force=True), the same way at both ends.
    parameters = {key for key, _ in model.named_parameters()}
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith(CDF_BUFFERS):
            value = value.new_empty(0)
        state[key] = value.half() if key in parameters else value
    atomic_torch_save(asset, {"format": CHECKPOINT_FORMAT, "arch": dict(checkpoint["arch"]), "state_dict": state})

    model, _ = load_codec(asset)  # measure the file exactly as the CLIs will load it
    bpps, psnrs = [], []
    for sample in load_dataset("toy", split="val", root=args.data_root).samples:
        x = read_image_tensor(sample.image_path).unsqueeze(0)
        compressed = compress_image(model, x)
        bpps.append(real_bpp(compressed))
        psnrs.append(psnr(x, decompress_image(model, compressed)))
    records = read_jsonl(run_dir / "log.jsonl")
    final = next(r for r in reversed(records) if r.get("split") == "final")
    card = {
        "name": name,
        "architecture": dict(checkpoint["arch"]),
        "quality": quality,
        "lambda": lambda_for(quality, "mse"),
        "metric": "mse",
        "dataset": "toy",
        "init": "scratch" if plan["init"] is None else f"fine-tuned from {codec_run_name(plan['init'])}",
        "init_sha256": plan.get("init_sha256"),
        "lr_schedule": "cosine to 1% of lr over the steps, per step",
        "lr": plan["lr"],
        "steps": final["step"],
        "batch_size": CODEC_BATCH_SIZE,
        "patch_size": args.image_size,
        "minutes": wall_minutes(records, "time"),
        "val_images": len(bpps),
        "val_bpp": round(sum(bpps) / len(bpps), 4),
        "val_psnr": round(sum(psnrs) / len(psnrs), 3),
        "val_measure": "real bitstreams (icm.codec.compress_image/decompress_image, pad to 64), "
                       "bpp and PSNR (8-bit RGB) averaged over images",
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float16",
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "file": asset.name,
        "file_size_bytes": asset.stat().st_size,
        "sha256": file_sha256(asset),
    }
    atomic_write_json(asset.with_name(f"{name}.json"), card)
    log(f"{name}: shipped {asset} ({card['file_size_bytes'] / 1e6:.2f} MB), {card['val_bpp']} bpp, "
        f"{card['val_psnr']} dB, {card['steps']} steps, {card['minutes']} min")
    return f"{name}: {card['val_bpp']} bpp {card['val_psnr']} dB"


# ----------------------------------------------------------------------------- main


def selected_steps(only: str | None) -> list[str]:
    """The steps to run, in build order."""
    everything = ["data", *DETECTORS, "codec"]
    if not only:
        return everything
    wanted = [s.strip() for s in only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in everything]
    if unknown:
        raise ValueError(f"--only: unknown step(s) {', '.join(unknown)} (known: {', '.join(everything)})")
    return [s for s in everything if s in wanted]


def run_step(step: str, args: argparse.Namespace, budget: Budget) -> str:
    try:
        if step == "codec":
            return build_codec_assets(args, budget)
        asset = Path(args.assets) / f"{step}.pt"
        if asset.is_file() and not args.force:
            log(f"{step}: {asset} exists; skipped")
            return f"{step}: exists"
        return build_detector_asset(step, args, budget)
    except Exception as e:  # noqa: BLE001 - one failed training must not stop the others
        log(f"{step}: FAILED: {e}")
        return f"{step}: failed ({e})"


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args_with_config(build_parser(), argv, "toy_assets")
    steps = selected_steps(args.only)
    budget = Budget({k: int(v) for k, v in args.steps}, {k: float(v) for k, v in args.minutes})
    torch.set_num_threads(args.threads)
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    save_run_config(args.runs, args)
    if "data" in steps:
        build_data(args)
    trainings = [s for s in steps if s != "data"]
    # Longest first, so the short ones fill in around them; the codec chain runs as one job.
    order = ["toy_faster_rcnn", "toy_centernet", "toy_yolov3", "codec", "toy_yolov8", "toy_fcos", "toy_ssdlite",
             "toy_mask_rcnn"]
    trainings.sort(key=order.index)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda s: run_step(s, args, budget), trainings))
    for line in results:
        log(f"result: {line}")
    assets = sorted(Path(args.assets).glob("*")) if Path(args.assets).is_dir() else []
    total = sum(p.stat().st_size for p in assets)
    log(f"assets in {args.assets}: {len(assets)} files, {total / 1e6:.2f} MB")
    return 0 if not any("failed" in r or "below" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
