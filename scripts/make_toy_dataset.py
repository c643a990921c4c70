"""Generate the toy world's detection set (icm.data.toy) in VOC layout.

    python scripts/make_toy_dataset.py --out data/toy
    python scripts/make_toy_dataset.py --out /tmp/toy_small --train 64 --val 16 --size 96 --seed 1

Same parameters, same bytes. The parameters are recorded in ``<out>/toy.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from icm.cli import exit_on_user_error, positive_int
from icm.config import parse_args_with_config
from icm.data import data_dir, make_toy_dataset
from icm.data.toy import OBJECTS_FILE
from icm.io import read_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_toy_dataset.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file with defaults for these flags")
    p.add_argument("--out", type=Path, default=data_dir() / "toy", help="output folder (created; one holding the same set is kept as is)")
    p.add_argument("--train", type=positive_int, default=2000, help="number of training images")
    p.add_argument("--val", type=positive_int, default=300, help="number of validation images")
    p.add_argument("--size", type=positive_int, default=128, help="image side in pixels (square images)")
    p.add_argument("--seed", type=int, default=0, help="base random seed")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args_with_config(build_parser(), argv, "make_toy_dataset")
    out = make_toy_dataset(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed)
    objects = read_json(out / OBJECTS_FILE)
    n_boxes = sum(len(v) for v in objects.values())
    print(f"toy set at {out}: {len(objects)} images, {n_boxes} boxes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
