"""The toy world's data: a deterministic synthetic detection set in VOC layout.

Each image shows 1 to 4 shapes of :data:`TOY_CLASSES` with random colour, shading, size,
rotation and position on a textured background (smooth noise, a gradient or stripes),
plus mild pixel noise. Later shapes may cover earlier ones, but never more than
:data:`MAX_OCCLUDED` of any shape's pixels. Every shape lies wholly inside the image and
its box is exactly the extent of the pixels it was drawn with (before anything covered
it), so boxes are tight and integral. The layout is a single VOC year folder::

    <root>/JPEGImages/<id>.png        lossless images (ids train_00000..., val_00000...)
    <root>/Annotations/<id>.xml       VOC XML, 1-based coordinates (see icm.data.voc)
    <root>/ImageSets/Main/{train,val}.txt
    <root>/objects.json               what was drawn: per id, name, box (0-based xyxy), visible
    <root>/instances_{train,val}.json instance masks, COCO instances format (pycocotools RLE)
    <root>/toy.json                   the generation parameters; written last (completion)

A third split, ``val_shifted`` (as many images as ``val``, ids ``val_shifted_00000``...),
draws the same six classes from a second distribution: :data:`SHIFTED`, the unseen image
domain. Its backgrounds are other texture families (checkerboards, dot fields, blocky
noise), its shapes smaller and of a muted palette, with less contrast, uneven lighting
and stronger pixel noise; beyond what the toy detectors' photometric augmentation covers.
Stage one and stage two never read it. Its objects are in ``objects_val_shifted.json``.

Instance masks are the VISIBLE part of each shape: its pixels minus those later shapes
cover (at most :data:`MAX_OCCLUDED` of them), so each lies inside its box, which is the whole
shape's extent. In the masks file, image ``i`` of a split has id ``i + 1`` and its
``file_name``; category ids are 1..6 in :data:`TOY_CLASSES` order; ``bbox`` is the box
(xywh), ``area`` the mask's pixel count. A toy set made before masks existed is completed
on first use: every image is drawn again from its seed, checked against the stored pixels,
and only the masks files are added (every existing file keeps its bytes); ``val_shifted`` is
added to a set made before it the same way (new files only, its split list last).

Determinism: every image has its own ``numpy`` generator seeded with (seed, split,
index), so a split does not change when the other split's size changes, and the same
parameters give the same bytes (with the same Pillow and zlib). The set is generated in
a temporary folder (``.<name>.partial-<pid>`` beside it) and renamed into place, so a
crash never leaves a half set where a complete one is expected.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import io
import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from icm.data.records import DetectionDataset
from icm.data.voc import read_voc
from icm.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

TOY_CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]
TOY_FORMAT_VERSION = 1
MARKER_FILE = "toy.json"
OBJECTS_FILE = "objects.json"
MASKS_FILE = "instances_{split}.json"
SPLITS = ("train", "val")
SHIFTED_SPLIT = "val_shifted"

MAX_OBJECTS = 4
MAX_OCCLUDED = 0.4  # at most this fraction of a shape's pixels may be covered by later shapes
RADIUS_RANGE = (0.07, 0.2)  # circumradius of a shape, as a fraction of the image size
MIN_CONTRAST = 80.0  # mean RGB distance between a shape's colour and the pixels it covers
PIXEL_NOISE = 4.0  # standard deviation of the additive pixel noise, in 8-bit levels
PLACEMENT_TRIES = 30
BACKGROUND_KINDS = ("smooth noise", "gradient", "stripes")


@dataclass(frozen=True)
class ToyDomain:
    """What a toy image is drawn from (the base domain's values are the module constants)."""

    name: str
    backgrounds: tuple[str, ...] = BACKGROUND_KINDS
    radius_range: tuple[float, float] = RADIUS_RANGE
    min_contrast: float = MIN_CONTRAST
    pixel_noise: float = PIXEL_NOISE
    colour_range: tuple[float, float] = (0.0, 255.0)  # of each RGB channel of a shape's colour
    lighting: float = 0.0  # depth of a smooth multiplicative illumination ramp (0: even light)


BASE = ToyDomain("base")
SHIFTED = ToyDomain("shifted", backgrounds=("checkerboard", "dots", "blocky noise"), radius_range=(0.07, 0.17),
                    min_contrast=70.0, pixel_noise=6.0, colour_range=(30.0, 225.0), lighting=0.3)
DOMAINS = {"base": BASE, "shifted": SHIFTED}

# The toy world's ImageNet (upstream pretraining of the toy detectors' backbones): one large
# shape on a texture, labelled with its shape, its colour (hue sector) and the texture kind.
CLASSIFICATION_LABELS = ("shape", "hue", "background")
HUE_SECTORS = 6
CLASSIFICATION_RADIUS = (0.2, 0.42)


def make_toy_dataset(
    out_dir: str | os.PathLike, train: int = 2000, val: int = 300, size: int = 128, seed: int = 0,
    val_shifted: int | None = None,
) -> Path:
    """Generate the toy set into ``out_dir`` and return it.

    An ``out_dir`` that already holds a complete set with these parameters is returned
    as is (completed by :func:`complete_toy_set` where it lacks a newer split or file); one
    with other parameters, or any other non-empty folder, is an error. ``val_shifted``:
    images of the shifted domain's split (None: as many as ``val``; 0: none; a set that has
    the split keeps its own).
    """
    out_dir = Path(out_dir)
    params = {"format_version": TOY_FORMAT_VERSION, "train": int(train), "val": int(val),
              "size": int(size), "seed": int(seed), "classes": TOY_CLASSES}  # fmt: skip
    if train < 0 or val < 0 or train + val == 0:
        raise ValueError(f"need a non-negative number of images in each split and at least one, got train={train} val={val}")
    if size < 32:
        raise ValueError(f"image size must be at least 32 px, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if (out_dir / MARKER_FILE).is_file():
        existing = {k: v for k, v in read_json(out_dir / MARKER_FILE).items() if k in params}
        if existing == params:
            return complete_toy_set(out_dir, val_shifted)
        raise FileExistsError(
            f"{out_dir}: holds a toy set made with {existing}, not {params}; remove it or choose another folder"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: exists and is not a complete toy set; remove it or choose another folder")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_toy_dataset(tmp, params)
        try:
            os.rename(tmp, out_dir)  # atomic; replaces an empty folder
        except OSError:
            if not is_toy_dataset(out_dir):
                raise
            # Another process finished first: use its set if it has the same parameters.
            return make_toy_dataset(out_dir, train, val, size, seed, val_shifted)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return complete_toy_set(out_dir, val_shifted)


def is_toy_dataset(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a complete toy set."""
    return (Path(root) / MARKER_FILE).is_file()


def read_toy(root: str | os.PathLike, split: str = "val") -> DetectionDataset:
    """Read one split (``train``, ``val`` or ``val_shifted``) of a toy set made by :func:`make_toy_dataset`."""
    root = Path(root)
    if not is_toy_dataset(root):
        raise FileNotFoundError(
            f"{root}: no complete toy set (make one with scripts/make_toy_dataset.py --out {root})"
        )
    dataset = read_voc(root, split, classes=TOY_CLASSES, name=f"toy_{split}")
    masks = root / MASKS_FILE.format(split=split)
    return dataclasses.replace(dataset, mask_file=masks) if masks.is_file() else dataset


def _write_toy_dataset(root: Path, params: dict) -> None:
    """Draw every image of both splits into ``root`` (a fresh folder); marker file last."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    size = params["size"]
    drawn: dict[str, list[dict]] = {}
    masks: dict[str, list[list[np.ndarray]]] = {split: [] for split in SPLITS}
    jobs = [(split, i) for split in SPLITS for i in range(params[split])]
    for split, i in tqdm(jobs, desc="toy images", unit="img", disable=None):
        image_id = f"{split}_{i:05d}"
        pixels, objects, visible = render_toy_image(_image_rng(params, split, i), size, with_masks=True)
        _write_sample(root, image_id, size, pixels, objects)
        drawn[image_id] = objects
        masks[split].append(visible)
    for split in SPLITS:
        ids = [f"{split}_{i:05d}\n" for i in range(params[split])]
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(ids), encoding="utf-8")
        _write_masks(root, split, size, [drawn[f"{split}_{i:05d}"] for i in range(params[split])], masks[split])
    (root / OBJECTS_FILE).write_text(json.dumps(drawn, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    (root / MARKER_FILE).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")


def _image_rng(params: dict, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([params["seed"], (*SPLITS, SHIFTED_SPLIT).index(split), index])


def render_toy_image(rng: np.random.Generator, size: int, with_masks: bool = False, domain: ToyDomain = BASE):
    """One image (uint8 ``[size, size, 3]``) and its objects: ``name``, ``box`` (0-based
    xyxy, exclusive right/bottom edges) and ``visible`` (fraction not covered); with
    ``with_masks`` also each object's visible mask (bool ``[size, size]``), the same draws.
    ``domain``: :data:`BASE` (the train/val images) or :data:`SHIFTED`."""
    base_textures = domain.backgrounds == BACKGROUND_KINDS
    canvas = _background(rng, size) if base_textures else _shifted_background(rng, size, domain)
    placed: list[dict] = []  # name, box, area, visible (its pixels not covered by later shapes)
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _try in range(PLACEMENT_TRIES):
            kind = TOY_CLASSES[int(rng.integers(len(TOY_CLASSES)))]
            radius = float(rng.uniform(*domain.radius_range)) * size
            cx, cy = rng.uniform(radius + 1, size - 1 - radius, size=2)
            angle = float(rng.uniform(0, 2 * math.pi))
            mask = _shape_mask(kind, float(cx), float(cy), radius, angle, size)
            if all((p["visible"] & ~mask).sum() >= (1 - MAX_OCCLUDED) * p["area"] for p in placed):
                break
        else:
            break  # no room left for another shape
        for p in placed:
            p["visible"] = p["visible"] & ~mask
        rows, cols = np.nonzero(mask)
        colour = _contrasting_colour(rng, canvas[rows, cols], domain)
        _paint_shaded(rng, canvas, rows, cols, colour, float(cx), float(cy), radius)
        box = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
        placed.append({"name": kind, "box": box, "area": len(rows), "visible": mask})
    if domain.lighting:
        canvas *= _lighting(rng, size, domain.lighting)[..., None]
    canvas += domain.pixel_noise * rng.standard_normal(canvas.shape, dtype=np.float32)
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    objects = [
        {"name": p["name"], "box": p["box"], "visible": round(int(p["visible"].sum()) / p["area"], 4)}
        for p in placed
    ]
    if with_masks:
        return pixels, objects, [p["visible"] for p in placed]
    return pixels, objects


def _write_sample(root: Path, image_id: str, size: int, pixels: np.ndarray, objects: list[dict]) -> None:
    """One image (lossless PNG) and its VOC XML, each written atomically (a set being
    completed may be read, or completed by another process, at the same time)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
    atomic_write_bytes(root / "JPEGImages" / f"{image_id}.png", buf.getvalue())
    atomic_write_bytes(root / "Annotations" / f"{image_id}.xml", _voc_xml(f"{image_id}.png", size, objects))


def _write_masks(root: Path, split: str, size: int, objects: list[list[dict]], masks: list[list[np.ndarray]]) -> None:
    """The split's instance masks as a COCO instances file (see the module docstring)."""
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for i, (image_objects, image_masks) in enumerate(zip(objects, masks)):
        images.append({"id": i + 1, "file_name": f"{split}_{i:05d}.png", "width": size, "height": size})
        for obj, mask in zip(image_objects, image_masks):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            x1, y1, x2, y2 = obj["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": TOY_CLASSES.index(obj["name"]) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(mask.sum()), "iscrowd": 0,
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(TOY_CLASSES)]
    atomic_write_json(root / MASKS_FILE.format(split=split),
                      {"images": images, "annotations": annotations, "categories": categories})


def complete_toy_set(root: str | os.PathLike, val_shifted: int | None = None) -> Path:
    """Add what a complete toy set made by an earlier version lacks (module docstring): the
    masks files of train and val, and the ``val_shifted`` split of ``val_shifted`` images
    (None: as many as the set's val split; 0: none). Existing files are never changed.
    Returns ``root``."""
    root = Path(root)
    params = read_json(root / MARKER_FILE)
    val_shifted = params["val"] if val_shifted is None else val_shifted
    for split in SPLITS:
        if (root / MASKS_FILE.format(split=split)).is_file():
            continue
        objects, masks = [], []
        for i in tqdm(range(params[split]), desc=f"toy {split} masks", unit="img", disable=None):
            image_path = root / "JPEGImages" / f"{split}_{i:05d}.png"
            pixels, image_objects, visible = render_toy_image(_image_rng(params, split, i), params["size"], with_masks=True)
            if not np.array_equal(np.asarray(Image.open(image_path).convert("RGB")), pixels):
                raise ValueError(f"{image_path}: differs from what this generator draws for it, so its masks "
                                 f"cannot be added; make the toy set again (remove {root})")
            objects.append(image_objects)
            masks.append(visible)
        _write_masks(root, split, params["size"], objects, masks)
    split_list = root / "ImageSets" / "Main" / f"{SHIFTED_SPLIT}.txt"
    if val_shifted > 0 and not split_list.is_file():
        _write_shifted_split(root, params, val_shifted)
    return root


def _write_shifted_split(root: Path, params: dict, count: int) -> None:
    """The ``val_shifted`` split into a complete set: every file written atomically (two
    processes may complete one set at once), the split list last."""
    size, drawn, masks = params["size"], {}, []
    for i in tqdm(range(count), desc="toy val_shifted images", unit="img", disable=None):
        image_id = f"{SHIFTED_SPLIT}_{i:05d}"
        pixels, objects, visible = render_toy_image(_image_rng(params, SHIFTED_SPLIT, i), size, with_masks=True,
                                                    domain=SHIFTED)
        _write_sample(root, image_id, size, pixels, objects)
        drawn[image_id] = objects
        masks.append(visible)
    atomic_write_text(root / f"objects_{SHIFTED_SPLIT}.json", json.dumps(drawn, indent=1, sort_keys=True) + "\n")
    _write_masks(root, SHIFTED_SPLIT, size, list(drawn.values()), masks)
    atomic_write_text(root / "ImageSets" / "Main" / f"{SHIFTED_SPLIT}.txt", "".join(f"{k}\n" for k in drawn))


def _paint_shaded(rng: np.random.Generator, canvas: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  colour: np.ndarray, cx: float, cy: float, radius: float) -> None:
    """Paint a shape's pixels in ``colour`` with a linear shading across it (a random
    direction, +-15%) so it is not a flat colour."""
    shade_angle = rng.uniform(0, 2 * math.pi)
    shade = 1 + 0.15 * ((cols - cx) * math.cos(shade_angle) + (rows - cy) * math.sin(shade_angle)) / radius
    canvas[rows, cols] = colour * shade[:, None].astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 ``[size, size, 3]`` texture: smooth noise, a gradient or stripes."""
    return _background_of_kind(rng, size, int(rng.integers(len(BACKGROUND_KINDS))))


def _background_of_kind(rng: np.random.Generator, size: int, kind: int) -> np.ndarray:
    """One texture of :data:`BACKGROUND_KINDS` (index ``kind``)."""
    if kind == 0:
        cells = int(rng.integers(3, 9))
        grid = rng.uniform(30, 225, (cells, cells, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32)
    c1, c2 = rng.uniform(30, 225, (2, 3)).astype(np.float32)
    yy, xx = _pixel_grid(size)
    angle = rng.uniform(0, 2 * math.pi)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == 1:
        t = (along - along.min()) / (along.max() - along.min())
    else:
        period = rng.uniform(0.06, 0.25) * size
        t = 0.5 + 0.5 * np.sin(2 * math.pi * along / period + rng.uniform(0, 2 * math.pi))
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def render_toy_classification(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One classification image (uint8 ``[size, size, 3]``) and its labels (shape index in
    :data:`TOY_CLASSES`, hue sector 0..HUE_SECTORS-1, background kind): a single large
    shape, shaded, on a texture, with the detection set's pixel noise. No evaluation uses
    this task; it only pretrains the toy detectors' backbones."""
    background = int(rng.integers(len(BACKGROUND_KINDS)))
    canvas = _background_of_kind(rng, size, background)
    shape = int(rng.integers(len(TOY_CLASSES)))
    radius = float(rng.uniform(*CLASSIFICATION_RADIUS)) * size
    cx, cy = rng.uniform(radius + 1, size - 1 - radius, size=2)
    mask = _shape_mask(TOY_CLASSES[shape], float(cx), float(cy), radius, float(rng.uniform(0, 2 * math.pi)), size)
    hue = int(rng.integers(HUE_SECTORS))
    h = (hue + rng.uniform(-0.35, 0.35)) / HUE_SECTORS % 1.0
    colour = 255 * np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.55, 1.0), rng.uniform(0.5, 1.0)), dtype=np.float32)
    rows, cols = np.nonzero(mask)
    _paint_shaded(rng, canvas, rows, cols, colour, float(cx), float(cy), radius)
    canvas += PIXEL_NOISE * rng.standard_normal(canvas.shape, dtype=np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), (shape, hue, background)


def toy_classification_arrays(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` classification images (uint8 ``[N, 3, size, size]``) and labels
    (int64 ``[N, 3]``, columns :data:`CLASSIFICATION_LABELS`); image i is drawn from a
    generator seeded with (seed, i), so any prefix is the same for any ``count``."""
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    labels = np.empty((count, len(CLASSIFICATION_LABELS)), dtype=np.int64)
    for i in tqdm(range(count), desc="toy classification images", unit="img", disable=None):
        pixels, labels[i] = render_toy_classification(np.random.default_rng([seed, 7, i]), size)
        images[i] = pixels.transpose(2, 0, 1)
    return images, labels


@functools.cache
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index of every pixel, float32 ``[size, size]`` each (read-only)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray, domain: ToyDomain = BASE) -> np.ndarray:
    """A random colour of the domain's range whose mean RGB distance to the pixels ``under``
    it (``[N, 3]``) is at least the domain's ``min_contrast`` (or the best of a few tries)."""
    best, best_distance = None, -1.0
    for _ in range(10):
        colour = rng.uniform(*domain.colour_range, 3).astype(np.float32)
        distance = float(np.linalg.norm(under - colour, axis=1).mean())
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= domain.min_contrast:
            break
    return best


def _shifted_background(rng: np.random.Generator, size: int, domain: ToyDomain) -> np.ndarray:
    """A float32 ``[size, size, 3]`` texture of the shifted domain: a rotated checkerboard,
    a field of dots, or blocky noise (cells of 2-4 px)."""
    kind = domain.backgrounds[int(rng.integers(len(domain.backgrounds)))]
    c1, c2 = rng.uniform(40, 200, (2, 3)).astype(np.float32)
    yy, xx = _pixel_grid(size)
    if kind == "checkerboard":
        cell = rng.uniform(0.05, 0.14) * size
        angle = rng.uniform(0, math.pi / 2)
        u = xx * math.cos(angle) + yy * math.sin(angle)
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    elif kind == "dots":
        t = np.zeros((size, size), np.float32)
        spacing = rng.uniform(0.06, 0.12) * size
        radius = rng.uniform(0.2, 0.4) * spacing
        offset = rng.uniform(0, spacing, 2)
        t[(((xx - offset[0]) % spacing - spacing / 2) ** 2 + ((yy - offset[1]) % spacing - spacing / 2) ** 2)
          <= radius**2] = 1.0
    else:  # blocky noise
        block = int(rng.integers(2, 5))
        cells = rng.uniform(0, 1, (-(-size // block),) * 2).astype(np.float32)
        t = np.kron(cells, np.ones((block, block), np.float32))[:size, :size]
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _lighting(rng: np.random.Generator, size: int, depth: float) -> np.ndarray:
    """A float32 ``[size, size]`` illumination ramp from ``1 - depth`` to 1 in a random
    direction (uneven light over the whole scene)."""
    yy, xx = _pixel_grid(size)
    angle = rng.uniform(0, 2 * math.pi)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    t = (along - along.min()) / (along.max() - along.min())
    return (1 - depth) + depth * t


def _shape_mask(kind: str, cx: float, cy: float, radius: float, angle: float, size: int) -> np.ndarray:
    """Boolean ``[size, size]`` mask of one shape (no anti-aliasing: its box is exact)."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    if kind in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
        if kind == "ring":
            inner = 0.55 * radius
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        if kind == "square":
            local = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
        elif kind == "triangle":
            local = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
        elif kind == "star":
            local = [
                (r * math.cos(a), r * math.sin(a))
                for k in range(10)
                for r, a in [(1.0 if k % 2 == 0 else 0.45, k * math.pi / 5 - math.pi / 2)]
            ]
        elif kind == "cross":
            w, s = 0.33, 1 / math.hypot(1, 0.33)  # arm half-width; s puts the corners on the circle
            local = [(s * u, s * v) for u, v in [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
                     (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]]  # fmt: skip
        else:
            raise ValueError(f"unknown toy shape {kind!r}")
        cos, sin = math.cos(angle), math.sin(angle)
        points = [(cx + radius * (u * cos - v * sin), cy + radius * (u * sin + v * cos)) for u, v in local]
        draw.polygon(points, fill=255)
    return np.asarray(img) > 0


def _voc_xml(filename: str, size: int, objects: list[dict]) -> bytes:
    """VOC annotation XML for one toy image (0-based boxes -> 1-based VOC coordinates)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "toy"
    ET.SubElement(root, "filename").text = filename
    size_el = ET.SubElement(root, "size")
    for key, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_el, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        obj_el = ET.SubElement(root, "object")
        ET.SubElement(obj_el, "name").text = obj["name"]
        ET.SubElement(obj_el, "pose").text = "Unspecified"
        ET.SubElement(obj_el, "truncated").text = "0"
        ET.SubElement(obj_el, "difficult").text = "0"
        x1, y1, x2, y2 = obj["box"]
        box_el = ET.SubElement(obj_el, "bndbox")
        for key, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box_el, key).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"
