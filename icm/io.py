"""Image and file I/O shared by every stage.

One image reader (:func:`read_image`) and one family of atomic writers: every file the
project produces is written to a temporary file in the destination folder and renamed
into place, so a crash never leaves a half-written image, JSON or checkpoint behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Larger than any image of VOC, COCO or Open Images (the biggest are ~ 30 MPix), far below
# what a decompression bomb asks for. Override per call or with ICM_MAX_IMAGE_PIXELS.
DEFAULT_MAX_PIXELS = int(os.environ.get("ICM_MAX_IMAGE_PIXELS", 100_000_000))
_WRITER = f"{socket.gethostname().replace('.', '_').replace('-', '_')}-{os.getpid()}"  # in temp names
_UMASK = os.umask(0o022)  # read the process umask (the only way) and put it back at once
os.umask(_UMASK)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Our own pixel limit replaces Pillow's (which only warns below 2x its limit).
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(ValueError):
    """An image file that does not exist, is not an image, is truncated or is too large."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha dropped, 16-bit scaled down)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        # I;16 / I;16B / I / F: scale the full 16-bit range onto 0..255.
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0
        arr = np.clip(np.round(arr / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Read an image file as an 8-bit RGB Pillow image with its EXIF orientation applied.

    Raises :class:`ImageReadError` naming the file when it is missing, not an image,
    truncated or corrupt, or larger than ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``).
    """
    path = Path(path)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            if img.width * img.height > limit:
                raise ImageReadError(
                    f"{path}: {img.width}x{img.height} pixels exceeds the limit of {limit} "
                    "(possible decompression bomb; raise ICM_MAX_IMAGE_PIXELS if intended)"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError,
            ImportError) as e:
        # ImportError: ultralytics patches Image.open to try optional decoders (pi-heif)
        # for files Pillow cannot identify; for us that is still "not a readable image".
        raise ImageReadError(f"{path}: cannot read image ({e})") from e


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB Pillow image -> float tensor [3, H, W] in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    """Float tensor [3, H, W] in [0, 1] -> 8-bit RGB Pillow image (rounded, clamped)."""
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(x.shape)}")
    arr = x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
    return Image.fromarray(arr.cpu().numpy())


def read_image_tensor(path: str | os.PathLike, max_pixels: int | None = None) -> torch.Tensor:
    """Read an image file as a float RGB tensor [3, H, W] in [0, 1]."""
    return image_to_tensor(read_image(path, max_pixels=max_pixels))


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root`` (recursive), sorted, hidden files and folders skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") for part in rel):
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            found.append(p)
    return sorted(found)


# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid is in the name, so that a later run can tell a dead writer's leftover
    # (remove_stale_temp_files) from a live one's file in progress.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_WRITER}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensors_sha256(state: dict[str, Any]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes (stored in our checkpoints,
    checked when they load: flipped bits in a tensor are found, not trained on)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_tensors_sha256(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """One-line ValueError naming ``path`` when its ``state_dict`` no longer matches the stored
    ``state_sha256`` (files without one, such as zoo files, are not checked)."""
    expected = checkpoint.get("state_sha256")
    if expected is not None and tensors_sha256(checkpoint.get("state_dict", {})) != expected:
        raise ValueError(f"{path}: corrupted checkpoint (its tensors do not match their stored SHA-256)")


class FolderLockedError(ValueError):
    """Another live process holds the lock (a one-line user error)."""


@contextlib.contextmanager
def held_lock(path: str | os.PathLike, force: bool = False, hint: str = "") -> Iterator[None]:
    """An advisory lock file naming its holder (host and pid), removed on exit.

    A lock whose holder is gone (this host, pid not alive) is taken over with a warning; one
    held by a live process, or by another host (whose processes cannot be checked from here)
    unless ``force``, is a :class:`FolderLockedError` naming the holder and ``hint``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    host, pid = _WRITER.rsplit("-", 1)
    mine = json.dumps({"host": host, "pid": int(pid)})
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            alive = holder.get("host") == host and isinstance(holder.get("pid"), int) and pid_alive(holder["pid"])
            same_host = holder.get("host") == host
            if alive or (not same_host and holder and not force):
                where = f"pid {holder.get('pid')} on {holder.get('host')}"
                raise FolderLockedError(f"{path}: held by {where}{'; ' + hint if hint else ''}"
                                        + ("" if alive else "; --force_unlock if that process is gone")) from None
            warnings.warn(f"{path}: taking over the lock of {holder or 'an unknown holder'} (no longer running)",
                          stacklevel=3)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(mine)
        break
    else:
        raise FolderLockedError(f"{path}: could not be taken")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Remove the temporary files of :func:`atomic_path` in ``folder`` (and below) whose
    writer ran on this machine and is no longer alive (a save killed midway); another
    machine's files (shards on a shared filesystem) are left alone. Returns the count."""
    removed = 0
    host = _WRITER.rsplit("-", 1)[0]
    for tmp in Path(folder).rglob(".*.tmp"):
        writer = next((p for p in tmp.name.split(".") if p.startswith(host + "-")), None)
        pid = writer[len(host) + 1:] if writer else ""
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_image(path: str | os.PathLike, img: Image.Image | torch.Tensor) -> None:
    """Write an image atomically; the format follows the suffix (PNG is lossless)."""
    path = Path(path)
    if isinstance(img, torch.Tensor):
        img = tensor_to_image(img)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image format for suffix {path.suffix!r}")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line to ``path`` with a single write, flushed to disk."""
    line = json.dumps(record, sort_keys=False) + "\n"
    with open(path, "a+b") as f:
        # After a crash mid-append the file ends in a torn line: start on a fresh line so
        # this record stays readable (read_jsonl skips the torn fragment).
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file written by :func:`append_jsonl`.

    A torn line left by a crash mid-append (the last line, or a line followed by the
    fresh line ``append_jsonl`` starts after it) is skipped with a warning; any other
    malformed line raises an error naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records, torn = [], 0
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if _cut_short(line, e):
                torn += 1
                continue
            raise ValueError(f"{path}:{i}: malformed JSON line ({e.msg})") from e
    if torn:
        warnings.warn(f"{path}: skipped {torn} torn line(s) left by an interrupted write", stacklevel=2)
    return records


def _cut_short(line: str, error: json.JSONDecodeError) -> bool:
    """Whether ``line`` is a valid record cut short (a torn write) rather than a corrupt one:
    the parser ran out of input, inside a string, a literal or a number."""
    rest = line.rstrip()
    if error.pos >= len(rest) or error.msg.startswith("Unterminated string"):
        return True
    tail = rest[error.pos:]
    return (any(word.startswith(tail) for word in ("true", "false", "null", "NaN", "Infinity", "-Infinity"))
            or re.fullmatch(r"[-+.eE0-9]+", tail) is not None)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; errors name the file and the position of the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from e
