"""Small pieces every command-line entry point shares: flag types, device choice, and
turning expected errors (bad files, bad configs) into one clear line instead of a traceback."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import torch

from icm.config import ConfigError
from icm.io import ImageReadError

# Errors a user can cause with a bad flag or file; they get one line, not a traceback.
USER_ERRORS = (ConfigError, ImageReadError, FileNotFoundError, ValueError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError)
RANDOM_INIT = ("none", "random")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` of a CLI whose description is its module docstring: the docstring as
    written, and every flag with its default."""


def fraction(text: str) -> float:
    """argparse type: ``8/255``, ``0.03`` or ``3e-2`` -> float."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError) as e:
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from e
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


# Validated numbers: every CLI states its counts and step sizes with these types, so a bad
# value (from the command line or a config) is one line before anything loads.
def _integer(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from e


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count: images, steps, a batch size)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give at least 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (0 usually means off or no limit; the flag's help says)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: give 0 or more")
    return value


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0 (a step size, a learning rate); ``8/255`` works."""
    value = fraction(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: give a number above 0")
    return value


def non_negative_number(text: str) -> float:
    """argparse type: a finite number >= 0; ``8/255`` works."""
    value = fraction(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: give 0 or more")
    return value


def probability(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = fraction(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: give a number in [0, 1]")
    return value


def limit(text: str) -> int | None:
    """argparse type: ``--limit N`` with N >= 1, or ``all`` (None: every image)."""
    return None if str(text).strip().lower() == "all" else positive_int(text)


def key_value(text: str) -> tuple[str, str]:
    """argparse type: ``NAME=VALUE`` -> (NAME, VALUE)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def detector_weights(items) -> dict[str, str | None]:
    """``--weights`` items as {detector name: path}; ``none``/``random`` mean random init (None).

    Items are ``NAME=PATH`` strings or (name, path) pairs (from :func:`key_value`); a config
    file may also give a mapping or a list of mappings.
    """
    pairs: list[tuple[str, str]] = []
    for item in [items] if isinstance(items, dict) else items or []:
        if isinstance(item, dict):
            pairs.extend((str(k), str(v)) for k, v in item.items())
        else:
            name, path = key_value(item) if isinstance(item, str) else item
            pairs.append((str(name), str(path)))
    return {name: None if path.lower() in RANDOM_INIT else path for name, path in pairs}


def shard(text: str) -> tuple[int, int]:
    """argparse type: ``I/N`` with 0 <= I < N -> (I, N)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected I/N, got {text!r}") from e
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard {text!r}: need 0 <= I < N")
    return i, n


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU. Under torchrun local rank r gets GPU
    r mod (GPUs on the machine), so ``--nproc_per_node`` may exceed them (several
    processes per GPU)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:  # plain "cuda": the local rank's GPU, as auto
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return device


def resume_file(resume: str, out: str | None, name: str) -> Path:
    """The checkpoint ``--resume`` means: the file given, ``name`` inside the folder given, or
    ``name`` inside ``--out`` when ``--resume`` comes alone (the same rule in every trainer)."""
    if resume == "":
        if not out:
            raise ValueError("--resume alone continues the run in --out: give --out, or --resume PATH")
        resume = out
    path = Path(resume)
    return path / name if path.is_dir() else path


def refuse_existing_run(folder: Path, markers: tuple[str, ...], resume: Path) -> None:
    """A new run never replaces another's checkpoints or log unless asked to: a one-line
    error naming what ``folder`` holds of ``markers`` and how to continue (``resume``) or
    replace it. The same rule in every trainer."""
    held = [name for name in markers if (folder / name).exists()]
    if held:
        raise ValueError(f"{folder} holds a run ({', '.join(held)}): --resume {resume} continues it, "
                         "--overwrite replaces it, or give another --out")


def settings_run_folder(parent: Path, name: str, settings: dict) -> Path:
    """``parent/<name>-<hash of settings>``: runs that differ in any setting never share a
    default folder, and every process of a distributed job computes the same one."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path(parent) / f"{name}-{digest}"


def link_latest(folder: Path) -> None:
    """Point ``<parent>/latest`` at ``folder`` (the newest run among default folders)."""
    link = folder.parent / "latest"
    tmp = folder.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(folder.name, target_is_directory=True)
    os.replace(tmp, link)


def user_error_text(error: Exception) -> str:
    """One line: ``PATH: reason`` for an operating-system error on a file, else the message."""
    if isinstance(error, FileExistsError) and error.filename is not None and os.path.isfile(error.filename):
        return f"{error.filename}: is a file, not a folder"
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def exit_on_user_error(main: Callable[..., int | None]) -> Callable[..., int | None]:
    """Decorate a CLI ``main``: user errors print ``error: ...`` and exit with status 2.

    Set ``ICM_DEBUG=1`` to see the full traceback instead.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("ICM_DEBUG"):
                raise
            print(f"error: {user_error_text(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
