"""YAML configs: the one config loader, CLI defaults from ``--config``, run records.

A config file is a YAML mapping. Top-level keys apply to every CLI that has a flag of
that name; a section named after a CLI (``meta_aafg:``, ``compression:``,
``evaluation:``, ``train_detector:``) applies to that CLI only and wins over the top
level. Flags given on the command line win over both::

    dataset: toy
    meta_aafg:
      models: toy_yolov3,toy_faster_rcnn,toy_centernet
      epsilon: 8/255
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from icm.io import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(os.environ.get("ICM_CONFIG_DIR", REPO_ROOT / "configs"))
TOY_CONFIG = CONFIG_DIR / "toy.yaml"
SECTIONS = (
    "meta_aafg", "compression", "evaluation", "make_tables", "codec", "train_detector",
    "make_toy_dataset", "toy_assets", "visualize",
)


class ConfigError(ValueError):
    """A config file that is missing, malformed or names an unknown option."""


def load_yaml(path: str | os.PathLike) -> dict:
    """Load a YAML mapping; errors name the file (and line where YAML knows it)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: malformed YAML ({getattr(e, 'problem', e)})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def resolve_config_path(name_or_path: str | os.PathLike, kind: str = "") -> Path:
    """A config given as a path, or by name under ``configs/<kind>/NAME.yaml``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    candidate = CONFIG_DIR / kind / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"no config named {name_or_path!r} (looked for {candidate})")


def config_defaults(path: str | os.PathLike, section: str, known: set[str]) -> dict[str, Any]:
    """The defaults a config file gives one CLI (``section``), validated against its flags."""
    data = load_yaml(path)
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key in SECTIONS:
            continue
        if key in known:
            out[key] = value
        else:
            warnings.warn(f"{path}: key {key!r} is not an option of {section}; ignored", stacklevel=2)
    body = data.get(section) or {}
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: section {section!r} must be a mapping")
    for key, value in body.items():
        key = str(key).replace("-", "_")
        if key not in known:
            raise ConfigError(
                f"{path}: unknown key {key!r} in section {section!r} "
                f"(known: {', '.join(sorted(known))})"
            )
        out[key] = value
    return out


def parse_args_with_config(
    parser: argparse.ArgumentParser, argv: list[str] | None, section: str
) -> argparse.Namespace:
    """Parse ``argv`` with defaults taken from ``--config FILE`` when given.

    Without ``--config``, ``--dataset toy`` reads ``configs/toy.yaml`` (the toy world).
    The config's values become the parser's defaults, so ``--help`` shows them too.

    The parser must define ``--config``. Values from the file go through each flag's
    ``type`` like command-line strings would, so ``epsilon: 8/255`` works in YAML too.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre, _ = parser.parse_known_args(argv)
    # `--dataset toy` alone selects the whole toy world (models, weights, codecs).
    if getattr(pre, "config", None) is None and str(getattr(pre, "dataset", "")).lower() == "toy":
        if TOY_CONFIG.is_file():
            argv = ["--config", str(TOY_CONFIG), *argv]
            pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None):
        actions = {a.dest: a for a in parser._actions if a.dest != "help"}
        # A config key may be a flag's destination or any of its long names (``out`` or
        # ``save_dir`` for stage two's output folder).
        aliases = {o[2:].replace("-", "_"): a.dest for a in actions.values() for o in a.option_strings
                   if o.startswith("--")}
        values = config_defaults(pre.config, section, set(actions) | set(aliases))
        for key, value in values.items():
            dest = aliases.get(key, key)
            parser.set_defaults(**{dest: _config_value(actions[dest], value, f"{pre.config}: {key}")})
    return parser.parse_args(argv)


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML value as the flag would have parsed it: strings (also inside lists) go
    through the flag's ``type``, list flags get lists, choices are checked."""
    if isinstance(value, dict):
        if not isinstance(action, argparse._AppendAction):
            return value
        value = [f"{k}={v}" for k, v in value.items()]  # a NAME: VALUE mapping for a NAME=VALUE flag
    if (action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction)) and not isinstance(value, list):
        value = [value]
    if isinstance(value, list) and action.nargs is None and isinstance(action, argparse._StoreAction):
        raise ConfigError(f"{where}: bad value ({value!r} is not a single value)")
    items = value if isinstance(value, list) else [value]
    if action.type is not None:
        try:
            items = [_typed(action.type, v) for v in items]
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"{where}: bad value ({e})") from e
    if action.choices is not None:
        bad = [v for v in items if v not in action.choices]
        if bad:
            raise ConfigError(f"{where}={bad[0]!r} is not one of {list(action.choices)}")
    return items if isinstance(value, list) else items[0]


def _typed(kind: Any, value: Any) -> Any:
    """``value`` (a YAML scalar) through a flag's ``type``, as the command line would give it:
    ``batch_size: 2.7`` is as wrong as ``--batch_size 2.7``; a list for a scalar is an error."""
    if isinstance(value, str):
        return kind(value)
    if value is None:  # YAML null: the flag's "not given"
        return None
    if isinstance(value, (list, dict)):
        raise ValueError(f"{value!r} is not a single value")
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{value!r} is a boolean")
    if kind is int and isinstance(value, float):
        raise ValueError(f"{value!r} is not an integer")
    if kind in (int, float):
        return kind(value)
    # A validating type (icm.cli.positive_int, ...) sees the number as the command line gives it.
    return kind(str(value)) if isinstance(value, (int, float)) and callable(kind) and kind is not bool else value


def command_line_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """Destinations of the flags given on the command line ``argv``, whatever their value."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default, action.required = argparse.SUPPRESS, False
    return set(vars(probe.parse_known_args(list(argv or []))[0]))


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace) -> set[str]:
    """Destinations of the flags the user set: on the command line ``argv`` or by ``--config``
    (a value other than the parser's own default)."""
    defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    return command_line_flags(parser, argv) | {k for k, default in defaults.items() if getattr(args, k, default) != default}


def keep_run_settings(asked: dict[str, Any], stored: dict[str, Any], defining: Iterable[str], explicit: set[str],
                      source: str | Path, flag_names: dict[str, str] | None = None,
                      same: Callable[[str, Any, Any], bool] | None = None,
                      new_run: str = "start a new run with the new settings") -> dict[str, Any]:
    """The settings of a resumed run, by the rule both trainers follow: every ``defining``
    setting (how the run optimises: model, loss, data sampling, optimiser, seed) is taken from
    ``stored`` (the checkpoint at ``source``); the others (its length, logging, workers,
    device, paths) come from ``asked``. A defining setting the user set explicitly
    (``explicit``) to another value is a one-line ValueError naming the flag and the file.
    ``same(key, asked, stored)`` compares values (default: equal, or close floats);
    ``new_run`` ends the message: how to start a run with other settings instead."""
    kept = dict(asked)
    for key in defining:
        if key not in stored:
            continue
        given, value = to_plain(asked.get(key)), to_plain(stored[key])
        if key in explicit and not (same(key, given, value) if same else _same_value(given, value)):
            flag = (flag_names or {}).get(key, f"--{key}")
            raise ValueError(f"{flag} {given} disagrees with {source}, which was trained with {value}: drop the flag "
                             f"to resume, or {new_run}")
        kept[key] = stored[key]
    return kept


def _same_value(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b))


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """The repository's HEAD commit (``+dirty`` when the tree has changes), or None."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=5,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(device: str | None = None) -> dict[str, Any]:
    """Versions, device and git commit, for the record written next to every run."""
    import numpy
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": device,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git_commit": git_commit(),
        "argv": sys.argv,
    }
    # Read installed versions from metadata, never by importing: importing ultralytics
    # calls dist.barrier() once a process group exists, which deadlocks rank-0-only writes.
    for pkg in ("torchvision", "compressai", "ultralytics", "pycocotools", "pytorch_msssim"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    return info


def to_plain(value: Any) -> Any:
    """Make a config value YAML-safe (paths -> str, tuples -> lists)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool):
        return value
    for plain in (int, float, str):  # subclasses (numpy floats, torch's version string)
        if isinstance(value, plain):
            return plain(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return str(value)


def save_run_config(out_dir: str | os.PathLike, config: dict | argparse.Namespace,
                    device: str | None = None) -> None:
    """Write ``config.yaml`` (the resolved config) and ``environment.yaml`` into ``out_dir``."""
    out_dir = Path(out_dir)
    if isinstance(config, argparse.Namespace):
        config = vars(config)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(to_plain(config), sort_keys=True))
    atomic_write_text(
        out_dir / "environment.yaml", yaml.safe_dump(to_plain(environment_info(device)), sort_keys=True)
    )
