"""Stage two: fine-tune a CompressAI codec on stage one's pseudo ground truth.

    cd Compression && python train_compression.py --backbone bmshj2018 --quality 3 --lr 1e-4 --dataset ./augmented_data
    python Compression/train_compression.py ...          # from the repository root
    icm-train-compression ...                                # installed console script
    torchrun --nproc_per_node 4 Compression/train_compression.py ...   # DistributedDataParallel

The codec encodes the original image and is trained towards
``(1 - beta) * original + beta * augmented`` (see ``icm/compression/losses.py``). It starts from
the CompressAI zoo weights for ``--backbone``/``--quality`` (default), from a local codec
(``--checkpoint``: a fine-tune, fresh optimisers and counters) or from scratch
(``--no_pretrained``, ``--N``/``--M`` for small codecs). ``--resume`` continues a run
exactly: model, both optimisers, scheduler, epoch, step, data order and RNG states, with the
run's own settings (``RESUMED_FLAGS``: lambda, beta, metric, quality, architecture, seed, ...)
and by default in the checkpoint's folder; a flag given that disagrees with them is an error.
Outputs in ``--save_dir``: ``last.pth.tar``, ``best.pth.tar`` (lowest validation loss),
``log.jsonl``, ``tensorboard/``, ``config.yaml``, ``environment.yaml``.

Unreadable images are skipped (the next pair stands in), with one warning per epoch naming
them; more than ``--max_unreadable_fraction`` of a dataset unreadable stops the run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from icm.cli import (
    exit_on_user_error,
    key_value,
    link_latest,
    non_negative_int,
    non_negative_number,
    positive_int,
    positive_number,
    probability,
    refuse_existing_run,
    resolve_device,
    resume_file,
    settings_run_folder,
)
from icm.codec import (
    QUALITY_LAMBDAS,
    build_codec,
    lambda_for,
    load_codec,
    read_checkpoint,
    resolve_backbone,
    save_codec_checkpoint,
)
from icm.compression.datasets import (
    PairedImageDataset,
    ResumableDistributedSampler,
    read_pairs,
    split_pairs,
)
from icm.compression.engine import (
    DistributedContext,
    batches,
    configure_optimizers,
    evaluate,
    gather_objects,
    init_distributed,
    replica_max_difference,
    train_step,
    wrap_distributed,
)
from icm.compression.losses import PseudoTargetLoss
from icm.config import (
    REPO_ROOT,
    command_line_flags,
    keep_run_settings,
    parse_args_with_config,
    save_run_config,
    to_plain,
)
from icm.config import explicit_flags as config_explicit_flags
from icm.io import ImageReadError, append_jsonl, remove_stale_temp_files
from icm.rng import capture_rng_state, restore_rng_state, seed_everything
from icm.schedule import warmup_cosine

MS_SSIM_MIN_PATCH = 161  # pytorch_msssim's 5-scale MS-SSIM needs more than 160 px

# What a resumed run takes from its checkpoint's config: the flags that define the run and
# its exact continuation. The others (epochs, max_steps, device, workers, logging, dataset
# paths, save_dir) may change on resume.
RESUMED_FLAGS = (
    "backbone", "quality", "metric", "lmbda", "beta", "N", "M", "arch_kwargs",
    "seed", "batch_size", "patch_size", "val_fraction", "lr", "aux_lr", "clip_max_norm", "scheduler",
)
LAST_CHECKPOINT = "last.pth.tar"
# Keys of a checkpoint that --resume needs (a codec asset has only format/arch/state_dict).
RESUME_KEYS = ("optimizer", "aux_optimizer", "rng", "epoch", "epoch_step", "step", "lambda", "beta", "config")


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags (every one also settable in ``--config`` under ``compression:``)."""
    p = argparse.ArgumentParser(
        prog="train_compression.py",
        description="Fine-tune a CompressAI codec with Meta-AAFG images as pseudo ground truth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="YAML file with defaults for these flags")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", required=True, nargs="+", metavar="FOLDER",
                      help="stage-one output folder (manifests + images/) or a plain image folder; several "
                      "folders (e.g. one per machine of a cluster run) are read as one set")
    data.add_argument("--val_dataset", help="separate validation folder (overrides --val_fraction)")
    data.add_argument("--val_fraction", type=probability, default=0.05,
                      help="share of --dataset held out for validation")
    data.add_argument("--patch_size", type=positive_int, default=256, help="square training crop (pads smaller images)")
    data.add_argument("--batch_size", type=positive_int, default=16, help="batch size per process")
    data.add_argument("--val_batch_size", type=positive_int, default=None, help="validation batch size (None: --batch_size)")
    data.add_argument("--num_workers", type=non_negative_int, default=4, help="data loader worker processes")
    data.add_argument("--max_unreadable_fraction", type=probability, default=0.01,
                      help="skip unreadable image pairs (warning once per epoch) up to this share of a "
                           "dataset; beyond it, stop")

    model = p.add_argument_group("model")
    model.add_argument("--backbone", default="bmshj2018",
                       help="CompressAI zoo name or alias (bmshj2018 = bmshj2018-hyperprior)")
    model.add_argument("--quality", type=positive_int, default=3, help="zoo quality 1..8: weights and default lambda")
    model.add_argument("--metric", choices=sorted(QUALITY_LAMBDAS), default="mse", help="distortion term")
    model.add_argument("--pretrained", action="store_const", const=True, default=None,
                       help="start from the zoo weights (default: yes, unless --checkpoint/--resume/--N/--M)")
    model.add_argument("--no_pretrained", "--no-pretrained", dest="pretrained", action="store_const", const=False,
                       help="random init (from scratch)")
    model.add_argument("--checkpoint", help="start from this codec checkpoint (fine-tune, not a resume)")
    model.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                       help="continue a run exactly, with its settings (lambda, beta, metric, quality, "
                            "architecture, seed, batch and patch size, lr) and in its folder: PATH is its "
                            "last.pth.tar or its folder; alone, the run in --out")
    model.add_argument("--N", type=positive_int, default=None, help="channels N of a from-scratch codec")
    model.add_argument("--M", type=positive_int, default=None, help="latent channels M of a from-scratch codec")
    model.add_argument("--arch_kwargs", type=key_value, nargs="*", default=[], metavar="NAME=INT",
                       help="other integer constructor arguments of a from-scratch codec")

    train = p.add_argument_group("training")
    train.add_argument("--lambda", dest="lmbda", type=positive_number, default=None,
                       help="rate-distortion weight (None: CompressAI's value for --quality/--metric)")
    train.add_argument("--beta", type=non_negative_number, default=1.0,
                       help="target = (1-beta)*original + beta*augmented; 0 is the plain fine-tuning control; "
                       "above 1 it extrapolates past the augmented image (clipped to [0, 1])")
    train.add_argument("--lr", type=positive_number, default=1e-4, help="learning rate of the codec")
    train.add_argument("--aux_lr", type=positive_number, default=1e-3, help="learning rate of the quantiles (aux loss)")
    train.add_argument("--clip_max_norm", type=non_negative_number, default=1.0, help="gradient clipping (0: off)")
    train.add_argument("--scheduler", choices=("plateau", "cosine", "none"), default="plateau",
                       help="plateau: ReduceLROnPlateau on the validation loss once per epoch, as CompressAI; "
                       "cosine: from --lr down to 1%% of it at --max_steps, stepped every step (a resume with "
                       "another --max_steps continues on that one's curve)")
    train.add_argument("--epochs", type=positive_int, default=100, help="epochs to train")
    train.add_argument("--max_steps", type=non_negative_int, default=0, help="stop after this many steps in all (0: no limit)")
    train.add_argument("--seed", type=int, default=0, help="seed of weights, crops, data order and noise")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")

    out = p.add_argument_group("output")
    out.add_argument("--out", "--save_dir", dest="save_dir", default=None,
                     help="output folder, also --save_dir (None: the --resume checkpoint's folder, else "
                          "Compression/checkpoints/<backbone>-q<quality>-<metric>-beta<beta>; a --config's "
                          "save_dir does not move a --resume PATH run)")
    out.add_argument("--log_every", type=positive_int, default=10, help="log (JSON lines, TensorBoard, bar) every N steps")
    out.add_argument("--save_every", type=non_negative_int, default=0, help="also save last.pth.tar every N steps (0: per epoch)")
    out.add_argument("--overwrite", action="store_true",
                     help="start a new run in --out even if it holds one (its checkpoints and log are replaced)")
    out.add_argument("--no_progress", action="store_true", help="no progress bar")
    out.add_argument("--no_tensorboard", "--no-tensorboard", dest="tensorboard", action="store_false",
                     help="no TensorBoard events")
    out.add_argument("--tensorboard", action="store_true", default=True,
                     help="write TensorBoard events to <save_dir>/tensorboard")
    return p


def resolve_dataset_path(path: str) -> Path:
    """``path`` as given, or (for the seed commands, run from inside a stage folder) relative
    to the repository root or to ``MetaAAFG/`` where stage one writes by default."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        if not given.exists():
            raise FileNotFoundError(f"{given}: dataset folder not found")
        return given
    candidates = [REPO_ROOT / given, REPO_ROOT / "MetaAAFG" / given]
    for candidate in candidates:
        if candidate.exists():
            print(f"dataset {path}: using {candidate}", file=sys.stderr)
            return candidate
    tried = ", ".join(str(c) for c in [given.resolve(), *candidates])
    raise FileNotFoundError(f"{path}: dataset folder not found (tried {tried})")


def default_save_dir(args: argparse.Namespace) -> Path:
    """``Compression/checkpoints/<backbone>-q<Q>-<metric>-beta<B>-<settings hash>``
    (:func:`icm.cli.settings_run_folder`): runs that differ in any setting (lr, data, start
    point, steps ...) never share a default folder."""
    name = f"{resolve_backbone(args.backbone)}-q{args.quality}-{args.metric}-beta{args.beta:g}"
    settings = {k: to_plain(getattr(args, k, None)) for k in (*RESUMED_FLAGS, "dataset", "val_dataset", "checkpoint",
                                                              "pretrained", "epochs", "max_steps")}
    return settings_run_folder(REPO_ROOT / "Compression" / "checkpoints", name, settings)


def explicit_flags(argv: list[str], args: argparse.Namespace) -> set[str]:
    """Flags the user set (:func:`icm.config.explicit_flags` of this parser)."""
    return config_explicit_flags(build_parser(), argv, args)


def read_resume_checkpoint(path: str) -> dict:
    """The training checkpoint ``path`` with everything ``--resume`` needs, or a one-line error."""
    checkpoint = read_checkpoint(path)
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if "optimizer" in missing or "aux_optimizer" in missing:
        raise ValueError(f"{path} is not a resumable stage-two checkpoint (no optimiser state); "
                         "use --checkpoint to fine-tune from it")
    if missing or not isinstance(checkpoint["config"], dict):
        raise ValueError(f"{path} is not a resumable stage-two checkpoint (lacks {', '.join(missing) or 'config'}); "
                         "use --checkpoint to fine-tune from it")
    return checkpoint


def resumed_args(args: argparse.Namespace, checkpoint: dict, explicit: set[str]) -> argparse.Namespace:
    """``args`` with the run-defining flags (``RESUMED_FLAGS``) taken from the checkpoint's
    config, by the rule of :func:`icm.config.keep_run_settings` (an explicit flag that
    disagrees is a one-line ValueError)."""
    stored = {**checkpoint["config"], "lmbda": checkpoint["lambda"], "beta": checkpoint["beta"]}
    options = {a.dest: a.option_strings[0] for a in build_parser()._actions if a.option_strings}

    def same(key: str, given, kept) -> bool:
        if key == "backbone":
            given, kept = resolve_backbone(given), resolve_backbone(kept)
        return given == kept or (isinstance(given, float) and isinstance(kept, float) and math.isclose(given, kept))

    kept = keep_run_settings(vars(args), stored, RESUMED_FLAGS, explicit, args.resume, options, same,
                             new_run="use --checkpoint to fine-tune with new settings")
    return argparse.Namespace(**kept)


def check_args(args: argparse.Namespace) -> None:
    """Reject flag combinations that cannot work, with one line each."""
    resolve_backbone(args.backbone)
    lambda_for(args.quality, args.metric)  # validates quality and metric
    if args.metric == "ms-ssim" and args.patch_size < MS_SSIM_MIN_PATCH:
        raise ValueError(f"--metric ms-ssim needs --patch_size >= {MS_SSIM_MIN_PATCH} (5-scale MS-SSIM)")
    if args.pretrained and (args.checkpoint or args.resume):
        raise ValueError("--pretrained conflicts with --checkpoint/--resume (they bring their own weights)")
    if args.pretrained and (args.N or args.M or args.arch_kwargs):
        raise ValueError("--pretrained zoo weights exist only for the zoo sizes: drop --N/--M/--arch_kwargs")
    if args.scheduler == "cosine" and args.max_steps < 1:
        raise ValueError("--scheduler cosine decays over --max_steps: give --max_steps")


def check_run_folder(save_dir: Path, args: argparse.Namespace) -> None:
    """A new run never replaces another one's checkpoints or log unless asked to."""
    if not (args.resume or args.overwrite):
        refuse_existing_run(save_dir, (LAST_CHECKPOINT, "best.pth.tar", "log.jsonl"), save_dir / LAST_CHECKPOINT)


def build_model(args: argparse.Namespace, resumed: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """The codec to train and its ``arch`` record (``resumed``: the --resume checkpoint)."""
    if resumed is not None:
        model, _ = load_codec(args.resume)
        return model, dict(resumed["arch"])
    if args.checkpoint:
        model, checkpoint = load_codec(args.checkpoint, backbone=args.backbone, quality=args.quality)
        backbone = checkpoint["arch"]["backbone"]
    else:
        pretrained = args.pretrained if args.pretrained is not None else not (args.N or args.M or args.arch_kwargs)
        sizes = {"N": args.N, "M": args.M, **{k: int(v) for k, v in args.arch_kwargs}}
        sizes = {k: v for k, v in sizes.items() if v is not None}
        model = build_codec(args.backbone, args.quality, metric=args.metric, pretrained=pretrained, **sizes)
        backbone = resolve_backbone(args.backbone)
    return model, {"backbone": backbone, "quality": args.quality, "metric": args.metric}


def load_pairs(args: argparse.Namespace) -> tuple[list, list]:
    """(train, validation) pairs from --dataset and --val_dataset or --val_fraction."""
    folders = [args.dataset] if isinstance(args.dataset, str) else args.dataset
    pairs = read_pairs([resolve_dataset_path(folder) for folder in folders])
    if args.val_dataset:
        return pairs, read_pairs(resolve_dataset_path(args.val_dataset))
    return split_pairs(pairs, args.val_fraction, seed=args.seed)


def make_loaders(args: argparse.Namespace, train_pairs: list, val_pairs: list,
                 context: DistributedContext, device: torch.device):
    """Train and validation loaders (validation may be None) with the train sampler."""
    train_set = PairedImageDataset(train_pairs, args.patch_size, train=True, seed=args.seed)
    sampler = ResumableDistributedSampler(train_set, context.world_size, context.rank, shuffle=True, seed=args.seed)
    common = {"num_workers": args.num_workers, "pin_memory": device.type == "cuda",
              # Own generator: creating loader iterators must not draw from the global RNG,
              # or a resumed run would see different quantisation noise.
              "generator": torch.Generator()}
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, **common)
    val_loader = None
    if val_pairs:
        val_set = PairedImageDataset(val_pairs, args.patch_size, train=False)
        val_sampler = (ResumableDistributedSampler(val_set, context.world_size, context.rank, shuffle=False)
                       if context.enabled else None)
        val_loader = DataLoader(val_set, batch_size=args.val_batch_size or args.batch_size,
                                sampler=val_sampler, **common)
    return train_loader, val_loader, sampler


def check_unreadable(dataset: PairedImageDataset, max_fraction: float) -> None:
    """One-line :class:`ImageReadError` once more than ``max_fraction`` of ``dataset``'s pairs
    turned out unreadable (under torchrun: of those this process has read)."""
    count = int(dataset.unreadable.count_nonzero())
    if count > max_fraction * len(dataset):
        paths = dataset.unreadable_paths()
        last = f" (last: {paths[-1]})" if count > 1 else ""
        raise ImageReadError(f"{paths[0]}: {count} of {len(dataset)} image pairs are unreadable{last}, "
                             f"more than --max_unreadable_fraction {max_fraction:g}; check the dataset")


def warn_unreadable(paths: list[Path], reported: set[Path], total: int, epoch: int) -> None:
    """One warning naming the unreadable images not reported yet (added to ``reported``)."""
    new = [p for p in paths if p not in reported]
    if not new:
        return
    reported.update(new)
    shown = ", ".join(str(p) for p in new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
    warnings.warn(f"epoch {epoch}: skipped {len(new)} unreadable image pair(s), the next pair stands in "
                  f"({len(reported)} of {total} so far): {shown}", stacklevel=2)


def train(args: argparse.Namespace, explicit: set[str] | None = None) -> dict:
    """Run stage-two training as configured by ``args``; returns the final record.

    ``explicit``: the flags the user set (see :func:`explicit_flags`), checked against the
    run's own settings on ``--resume``; None: those whose value is not the parser default.
    """
    if args.resume is not None:
        args.resume = str(resume_file(args.resume, args.save_dir, LAST_CHECKPOINT))
    if args.checkpoint and args.resume:
        raise ValueError("--checkpoint starts a new fine-tune, --resume continues a run: give one")
    resumed = None
    if args.resume:  # before check_args: the run's own settings are the ones to check
        resumed = read_resume_checkpoint(args.resume)
        args = resumed_args(args, resumed, explicit if explicit is not None else explicit_flags([], args))
    check_args(args)
    device = resolve_device(args.device)
    if args.save_dir:
        save_dir = Path(args.save_dir)
    else:  # a resumed run goes on where it was, never into another run's default folder
        save_dir = Path(args.resume).parent if args.resume else default_save_dir(args)
    check_run_folder(save_dir, args)
    lmbda = args.lmbda if args.lmbda is not None else lambda_for(args.quality, args.metric)
    # Data and weights first, so a missing folder or zoo file leaves nothing written.
    train_pairs, val_pairs = load_pairs(args)
    seed_everything(args.seed)  # same initial weights on every rank
    model, arch = build_model(args, resumed)
    if int(os.environ.get("RANK", 0)) == 0:
        # Before joining the process group: recording the environment imports ultralytics,
        # whose import calls dist.barrier() once a group exists (a rank-0-only deadlock).
        save_dir.mkdir(parents=True, exist_ok=True)
        if not args.save_dir and not args.resume:
            link_latest(save_dir)
        remove_stale_temp_files(save_dir)  # a save killed midway
        if args.overwrite and not args.resume:
            (save_dir / "log.jsonl").unlink(missing_ok=True)
        save_run_config(save_dir, {**vars(args), "lambda_resolved": lmbda, "save_dir": str(save_dir)}, str(device))
    context = init_distributed(device)

    model = model.to(device).train()
    train_loader, val_loader, sampler = make_loaders(args, train_pairs, val_pairs, context, device)
    ddp_model = wrap_distributed(model, context, device)
    optimizer, aux_optimizer = configure_optimizers(model, args.lr, args.aux_lr)
    scheduler = None
    if args.scheduler == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min")
    elif args.scheduler == "cosine":
        scheduler = warmup_cosine(optimizer, 0, args.max_steps)
    criterion = PseudoTargetLoss(lmbda, metric=args.metric, beta=args.beta)
    seed_everything(args.seed + context.rank)  # independent quantisation noise per rank

    epoch, epoch_step, step, best_loss = 0, 0, 0, float("inf")
    epoch_loss_sum, epoch_loss_count = 0.0, 0
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        aux_optimizer.load_state_dict(resumed["aux_optimizer"])
        if scheduler is not None and resumed.get("lr_scheduler"):
            scheduler.load_state_dict(resumed["lr_scheduler"])
        epoch, epoch_step, step = resumed["epoch"], resumed["epoch_step"], resumed["step"]
        best_loss = resumed.get("best_loss", best_loss)
        epoch_loss_sum, epoch_loss_count = resumed.get("epoch_loss", (0.0, 0))
        rng_states = resumed["rng"]
        if len(rng_states) == context.world_size:
            restore_rng_state(rng_states[context.rank])
        else:
            warnings.warn(f"{args.resume}: saved with {len(rng_states)} processes, resumed with "
                          f"{context.world_size}: RNG streams restart from the seed", stacklevel=2)

    datasets = [train_loader.dataset] + ([val_loader.dataset] if val_loader is not None else [])
    reported_unreadable: set[Path] = set()

    def report_unreadable(finished_epoch: int) -> None:
        """Warn (rank 0) about new unreadable images found on any rank, stop when there are
        too many; collective (every rank calls it at the same point)."""
        found = gather_objects([p for d in datasets for p in d.unreadable_paths()], context)
        if context.is_main:
            paths = sorted({p for rank_paths in found for p in rank_paths})
            warn_unreadable(paths, reported_unreadable, sum(len(d) for d in datasets), finished_epoch)
        for dataset in datasets:
            check_unreadable(dataset, args.max_unreadable_fraction)

    writer = None
    if context.is_main:
        if args.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(save_dir / "tensorboard", purge_step=step or None)
        print(f"{arch['backbone']} q{args.quality} lambda={lmbda} beta={args.beta}: {len(train_pairs)} train / "
              f"{len(val_pairs)} val pairs, {context.world_size} process(es) on {device}"
              f"{f' (DDP, {torch.distributed.get_backend()})' if context.enabled else ''}, saving to {save_dir}",
              file=sys.stderr)

    def log(record: dict) -> None:
        if not context.is_main:
            return
        append_jsonl(save_dir / "log.jsonl", record)
        if writer is not None:
            for key, value in record.items():
                if isinstance(value, float) and key not in ("epoch", "step", "time"):
                    writer.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def save(is_best: bool) -> None:
        rng_states = gather_objects(capture_rng_state(), context)  # collective: every rank
        if not context.is_main:
            return
        extra = {
            "optimizer": optimizer.state_dict(),
            "aux_optimizer": aux_optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch, "epoch_step": epoch_step, "step": step, "best_loss": best_loss,
            "epoch_loss": [epoch_loss_sum, epoch_loss_count],
            "lambda": lmbda, "beta": args.beta, "world_size": context.world_size,
            "rng": rng_states, "config": to_plain(vars(args)),
        }
        save_codec_checkpoint(save_dir / "last.pth.tar", model, arch, extra)
        if is_best:
            save_codec_checkpoint(save_dir / "best.pth.tar", model, arch, extra)

    def validate_and_save(allow_scheduler: bool, finished_epoch: int, train_loss: float) -> dict:
        """Validate, step the scheduler (epoch ends only), save last (and best)."""
        nonlocal best_loss
        metrics = evaluate(ddp_model, criterion, val_loader, device) if val_loader is not None else {}
        val_loss = metrics.get("loss", train_loss)
        if metrics:
            log({"split": "val", "epoch": finished_epoch, "step": step, **metrics})
        if allow_scheduler and args.scheduler == "plateau":
            scheduler.step(val_loss)
        is_best = val_loss < best_loss
        best_loss = min(best_loss, val_loss)
        save(is_best)
        return metrics

    steps_per_epoch = math.ceil(sampler.num_samples / args.batch_size)
    if resumed is not None and (epoch >= args.epochs or (args.max_steps and step >= args.max_steps)):
        warnings.warn(f"{args.resume}: nothing to train, the run is at epoch {epoch} and step {step} "
                      f"(--epochs {args.epochs}, --max_steps {args.max_steps}): raise one to continue", stacklevel=2)
    stopped = False
    val_metrics: dict = {}
    start_time = time.perf_counter()
    last_log = {"time": start_time, "data_wait": 0.0}
    while epoch < args.epochs and not stopped:
        if args.max_steps and step >= args.max_steps:
            break
        sampler.set_epoch(epoch)
        train_loader.dataset.set_epoch(epoch)
        sampler.start_index = epoch_step * args.batch_size
        # The context closes (clears) the bar on an error too, so the error line stands alone.
        with tqdm(total=steps_per_epoch, initial=epoch_step, desc=f"epoch {epoch}",
                  disable=not context.is_main or args.no_progress, leave=False) as bar:
            wait_start = time.perf_counter()
            for x, x_aug in batches(train_loader):
                last_log["data_wait"] += time.perf_counter() - wait_start
                check_unreadable(train_loader.dataset, args.max_unreadable_fraction)
                x, x_aug = x.to(device, non_blocking=True), x_aug.to(device, non_blocking=True)
                losses = train_step(ddp_model, criterion, x, x_aug, optimizer, aux_optimizer, args.clip_max_norm)
                if not math.isfinite(losses["loss"].item()):  # as the torchvision references stop
                    start = args.resume or args.checkpoint or "its initial weights"
                    raise ValueError(f"step {step + 1}: the loss is {losses['loss'].item()} (not finite); the run "
                                     f"started from {start}: check that file, or lower --lr")
                if args.scheduler == "cosine":
                    scheduler.step()
                step += 1
                epoch_step += 1
                if val_loader is None:  # no validation set: the epoch's mean train loss stands in
                    epoch_loss_sum += losses["loss"].item()
                    epoch_loss_count += 1
                bar.update(1)
                if step % args.log_every == 0:
                    now = time.perf_counter()
                    record = {"split": "train", "epoch": epoch, "step": step,
                              **{k: v.item() for k, v in losses.items()},
                              "lr": optimizer.param_groups[0]["lr"],
                              "data_wait_fraction": last_log["data_wait"] / max(now - last_log["time"], 1e-9),
                              "time": now - start_time}
                    last_log = {"time": now, "data_wait": 0.0}
                    log(record)
                    bar.set_postfix(loss=f"{record['loss']:.4g}", bpp=f"{record['bpp_loss']:.3f}",
                                    mse=f"{record['mse_loss']:.3g}")
                if args.save_every and step % args.save_every == 0:
                    save(is_best=False)
                if args.max_steps and step >= args.max_steps:
                    stopped = epoch_step < steps_per_epoch
                    break
                wait_start = time.perf_counter()
        if stopped:
            break
        # The checkpoint written now must say "start at the next epoch".
        train_loss = epoch_loss_sum / max(epoch_loss_count, 1)
        epoch, epoch_step = epoch + 1, 0
        epoch_loss_sum, epoch_loss_count = 0.0, 0
        val_metrics = validate_and_save(True, epoch - 1, train_loss)
        report_unreadable(epoch - 1)

    if stopped:  # mid-epoch: the scheduler only ever steps at epoch ends
        val_metrics = validate_and_save(False, epoch, epoch_loss_sum / max(epoch_loss_count, 1))
        report_unreadable(epoch)
    final = {"split": "final", "epoch": epoch, "step": step, "best_loss": best_loss,
             "replica_max_difference": replica_max_difference(model, context),
             "time": time.perf_counter() - start_time, **{f"val_{k}": v for k, v in val_metrics.items()}}
    log(final)
    if writer is not None:
        writer.close()
    return final


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``train_compression.py`` and the ``icm-train-compression`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args_with_config(build_parser(), argv, "compression")
    if args.resume is not None:
        given = command_line_flags(build_parser(), argv)
        if args.checkpoint and "checkpoint" not in given:
            args.checkpoint = None  # a config's fine-tune start point: the resumed run is further along
        if args.resume and "save_dir" not in given:
            args.save_dir = None  # --resume PATH goes on in PATH's folder, not in a config's save_dir
    try:
        train(args, explicit_flags(argv, args))
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
