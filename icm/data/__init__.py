"""Detection datasets: readers for VOC, COCO, Open Images, plain image folders and the
synthetic toy set, all returning one record type, plus named configs and a torch Dataset.

    from icm.data import load_dataset, DetectionImageDataset, collate_detection
    dataset = load_dataset("voc", split="val")          # configs/datasets/voc.yaml
    loader = DataLoader(DetectionImageDataset(dataset), batch_size=4, collate_fn=collate_detection)
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from icm.config import CONFIG_DIR, REPO_ROOT, ConfigError, load_yaml, resolve_config_path
from icm.data.classmaps import COCO_CLASSES, VOC_CLASSES, class_map
from icm.data.coco import read_coco
from icm.data.folder import read_image_folder
from icm.data.oid import read_oid
from icm.data.records import DetectionDataset, DetectionSample
from icm.data.toy import TOY_CLASSES, complete_toy_set, is_toy_dataset, make_toy_dataset, read_toy
from icm.data.voc import read_voc
from icm.io import read_image_tensor

__all__ = [
    "COCO_CLASSES",
    "TOY_CLASSES",
    "VOC_CLASSES",
    "DetectionDataset",
    "DetectionImageDataset",
    "DetectionSample",
    "class_map",
    "collate_detection",
    "data_dir",
    "link_split_images",
    "load_dataset",
    "make_toy_dataset",
    "read_coco",
    "read_image_folder",
    "read_oid",
    "read_toy",
    "read_voc",
]

READERS: dict[str, Callable[..., DetectionDataset]] = {
    "voc": read_voc,
    "coco": read_coco,
    "oid": read_oid,
    "toy": read_toy,
    "folder": read_image_folder,
}
# Reader options that are paths: relative ones are taken relative to the dataset root.
PATH_OPTIONS = ("ann_file", "image_dir", "box_csv", "class_csv", "image_ids", "image_labels_csv", "hierarchy_json")


def data_dir() -> Path:
    """The base folder for relative dataset roots: ``$ICM_DATA_ROOT``, else ``<repo>/data``."""
    return Path(os.environ.get("ICM_DATA_ROOT") or REPO_ROOT / "data")


def link_split_images(name_or_config: str | os.PathLike, split: str, folder: str | os.PathLike,
                      root: str | os.PathLike | None = None) -> Path:
    """A plain image folder of links to one split's images (stage two reads plain image
    folders); rebuilt when it does not hold exactly that split's images. Returns ``folder``."""
    folder = Path(folder)
    samples = load_dataset(name_or_config, split=split, root=root).samples
    if not folder.is_dir() or len(list(folder.iterdir())) != len(samples):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for sample in samples:
            (folder / Path(sample.image_path).name).symlink_to(Path(sample.image_path).resolve())
    return folder


def load_dataset(
    name_or_config: str | os.PathLike,
    split: str = "val",
    root: str | os.PathLike | None = None,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    **overrides: Any,
) -> DetectionDataset:
    """Load a dataset by config name (``voc``, ``coco``, ``oid``, ``toy``: the files in
    ``configs/datasets/``), by the path of such a YAML file, or from a plain image folder.

    ``split`` picks an entry of the config's ``splits``; ``root`` (a path as given, e.g.
    ``--data_root``) replaces the config's root, the data's folder (e.g. a VOCdevkit); a
    relative root in a config is under :func:`data_dir`. ``overrides`` replace or add
    reader options (e.g. ``skip_unknown=True``). Config names are case-insensitive
    (``VOC`` = ``voc``). ``limit`` keeps the first N samples. ``shard=(I, N)`` keeps samples
    I, I + N, ... of those, and the VOC, COCO and Open Images readers parse only those images'
    annotations (positions in the split's image list, before any missing image is skipped),
    so each process of a large run reads its part of the index. The toy set is generated on
    first use. Missing data is a one-line error saying what is missing and how to point at it.
    """
    if shard is None:
        dataset = _load_dataset(name_or_config, split, root, overrides, None)
        return dataset if limit is None else dataclasses.replace(dataset, samples=dataset.samples[:limit])
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= I < N")

    def select(position: int) -> bool:
        return (limit is None or position < limit) and position % count == index

    return _load_dataset(name_or_config, split, root, overrides, select)


def _load_dataset(name_or_config: str | os.PathLike, split: str, root: str | os.PathLike | None,
                  overrides: dict[str, Any], select: Callable[[int], bool] | None) -> DetectionDataset:
    """The dataset with only the positions ``select`` keeps (all with None): the reader
    selects when it takes ``select`` (and parses nothing else), else its output is filtered."""
    path = Path(name_or_config)
    if (CONFIG_DIR / "datasets" / f"{str(name_or_config).lower()}.yaml").is_file():
        name_or_config = str(name_or_config).lower()
    is_config_name = (CONFIG_DIR / "datasets" / f"{name_or_config}.yaml").is_file()
    if path.is_dir() and not is_config_name:  # a config name wins over a folder of that name
        return _selected(read_image_folder(path, **overrides), select)
    config_path = resolve_config_path(name_or_config, "datasets")
    config = load_yaml(config_path)
    fmt = config.get("format")
    if fmt not in READERS:
        raise ConfigError(f"{config_path}: 'format' must be one of {sorted(READERS)}, got {fmt!r}")
    given_root = root is not None
    if root is None:
        root = Path(config.get("root", ""))
        root = root if root.is_absolute() else data_dir() / root
    root = Path(root)
    if given_root:  # --data_root is read by its layout, whatever the name says
        layout = detect_layout(root)
        if layout is not None and layout != config_path.stem and config_path.parent == CONFIG_DIR / "datasets":
            warnings.warn(f"{root} has the layout of a {layout} set: read as --dataset {layout}, not "
                          f"{config_path.stem}", stacklevel=3)
            return _load_dataset(layout, split, root, overrides, select)

    splits = config.get("splits") or {}
    if splits and split not in splits:
        raise ConfigError(f"{config_path}: no split {split!r} (splits: {', '.join(splits)})")
    options = {**(splits.get(split) or {}), **overrides}
    for key in PATH_OPTIONS:
        if isinstance(options.get(key), str):
            options[key] = root / options[key]
    accepted = inspect.signature(READERS[fmt]).parameters
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ConfigError(f"{config_path}: options {unknown} are not accepted by the {fmt} reader")
    if select is not None and "select" in accepted:
        options["select"], select = select, None  # the reader selects: nothing left to filter

    if fmt == "toy":
        if not is_toy_dataset(root):
            make_toy_dataset(root, **(config.get("generate") or {}))
        complete_toy_set(root)  # a set made before the masks files or val_shifted existed
        return _selected(read_toy(root, **options), select)
    for needed in [root] + [options[k] for k in PATH_OPTIONS if isinstance(options.get(k), Path)]:
        if not needed.exists():
            raise FileNotFoundError(
                f"{config_path.stem} data not found: {needed} is missing. {config.get('download', '')} "
                "Or pass the data's folder with --data_root, or set ICM_DATA_ROOT to the folder holding it."
            )
    if fmt in ("voc", "folder"):
        return _selected(READERS[fmt](root, **options), select)
    return _selected(READERS[fmt](**options), select)  # coco, oid: their files are options under root


def _selected(dataset: DetectionDataset, select: Callable[[int], bool] | None) -> DetectionDataset:
    """The samples at the positions ``select`` keeps (readers that parse everything anyway)."""
    if select is None:
        return dataset
    return dataclasses.replace(dataset, samples=[s for i, s in enumerate(dataset.samples) if select(i)])


def detect_layout(root: str | os.PathLike) -> str | None:
    """The dataset config whose layout the folder ``root`` has: ``toy`` (a toy set's record),
    ``voc`` (``VOC2007/`` or ``VOC2012/`` with ``Annotations/``), ``coco``
    (``annotations/instances_*.json``), ``oid`` (``class-descriptions*.csv``); None otherwise."""
    root = Path(root)
    if not root.is_dir():
        return None
    if is_toy_dataset(root):
        return "toy"
    if any((root / year / "Annotations").is_dir() for year in ("VOC2007", "VOC2012")):
        return "voc"
    if any((root / "annotations").glob("instances_*.json")):
        return "coco"
    if any(root.glob("*class-descriptions*.csv")):
        return "oid"
    return None


class DetectionImageDataset(Dataset):
    """A torch Dataset over a :class:`DetectionDataset`.

    Item ``i`` is ``(image, target)``: ``image`` a float tensor ``[3, H, W]`` in [0, 1]
    (:func:`icm.io.read_image_tensor`), ``target`` a dict with ``boxes`` float32 [N, 4]
    (xyxy pixels), ``labels`` int64 [N], ``difficult`` / ``iscrowd`` / ``group`` bool [N],
    ``id`` (str) and ``size`` ``(H, W)``. ``transform(image, target) -> (image, target)``
    is applied last, when given. With ``masks`` the target also has ``masks`` uint8
    [N, H, W]: each box's instance mask from the dataset's ``mask_file`` (the annotation of
    that image whose box overlaps it most; an object without one is an error naming it).
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        transform: Callable[[torch.Tensor, dict], tuple[torch.Tensor, dict]] | None = None,
        masks: bool = False,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.masks_by_file: dict[str, list[dict]] | None = None
        if masks:
            if dataset.mask_file is None:
                raise ValueError(f"dataset {dataset.name} has no instance masks file (mask_file)")
            from icm.io import read_json

            instances = read_json(dataset.mask_file)
            names = {img["id"]: img["file_name"] for img in instances.get("images", [])}
            self.masks_by_file = {}
            for ann in instances.get("annotations", []):
                self.masks_by_file.setdefault(names[ann["image_id"]], []).append(ann)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        sample = self.dataset[i]
        image = read_image_tensor(sample.image_path)
        height, width = image.shape[1:]
        if (width, height) != (sample.width, sample.height):
            raise ValueError(
                f"{sample.image_path}: image is {width}x{height} but its annotation says "
                f"{sample.width}x{sample.height}"
            )
        target = {
            "boxes": torch.from_numpy(sample.boxes.copy()),
            "labels": torch.from_numpy(sample.labels.copy()),
            "difficult": torch.from_numpy(sample.difficult.copy()),
            "iscrowd": torch.from_numpy(sample.iscrowd.copy()),
            "group": torch.from_numpy(sample.group.copy()),
            "id": sample.id,
            "size": (height, width),
        }
        if self.masks_by_file is not None:
            target["masks"] = self._instance_masks(sample, height, width)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def _instance_masks(self, sample, height: int, width: int) -> torch.Tensor:
        annotations = self.masks_by_file.get(Path(sample.image_path).name, [])
        return _decode_masks(annotations, sample, height, width, self.dataset.mask_file)


def _decode_masks(annotations: list[dict], sample, height: int, width: int, source) -> torch.Tensor:
    from pycocotools import mask as mask_utils

    boxes = np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return torch.zeros(0, height, width, dtype=torch.uint8)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    ann_boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    iou = (np.asarray(mask_utils.iou(xywh, ann_boxes, [0] * len(ann_boxes))).reshape(len(boxes), -1)
           if len(ann_boxes) else np.zeros((len(boxes), 0)))
    if not iou.shape[1] or (iou.max(1) < 0.5).any():
        raise ValueError(f"{source}: no instance mask for an object of image {Path(sample.image_path).name}")
    masks = []
    for k in iou.argmax(1):
        segmentation = annotations[k]["segmentation"]
        rle = mask_utils.frPyObjects(segmentation, height, width) if isinstance(segmentation, list) else segmentation
        rle = mask_utils.merge(rle) if isinstance(rle, list) else rle
        masks.append(mask_utils.decode(rle))
    return torch.from_numpy(np.stack(masks).astype(np.uint8))


def collate_detection(
    batch: list[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """DataLoader ``collate_fn``: images (sizes may differ) and targets as two lists."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)
