"""Convert a pickled ultralytics ``.pt`` file, once, into this project's detector checkpoint
(plain data, loaded with ``torch.load(weights_only=True)``).

    python scripts/convert_weights.py yolov8 ~/Downloads/yolov8n-custom.pt runs/yolov8-custom.pt --trust_pickle

An ultralytics ``.pt`` file is a pickle: loading it unrestricted runs whatever code it
names. Without ``--trust_pickle`` the file goes through ultralytics' safe loader (its own
model classes only; ordinary checkpoints pass, nothing else runs); ``--trust_pickle`` loads
one that the safe loader refuses, unrestricted: only for files from a source you trust.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from icm.cli import HelpFormatter, exit_on_user_error
from icm.detectors import build_detector, save_detector_checkpoint
from icm.io import file_sha256


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert_weights.py", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("name", help="registered detector name (an ultralytics family one, e.g. yolov8)")
    p.add_argument("source", help="the ultralytics .pt file")
    p.add_argument("out", help="our checkpoint to write")
    p.add_argument("--trust_pickle", action="store_true",
                   help="load without the safe loader's allow-list: you trust the file's source (unpickling it "
                   "can run code)")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source = Path(args.source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: file not found")
    detector = build_detector(args.name, weights=str(source), trust_pickle=args.trust_pickle)
    card = {"converted_from": source.name, "source_sha256": file_sha256(source)}
    save_detector_checkpoint(args.out, detector, card=card, half=False)
    print(f"{args.out}: {args.name} with {len(detector.classes)} classes, from {source.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
