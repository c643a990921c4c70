"""Encode one image into a real bitstream file and decode it back.

    python Evaluation/codec.py compress IMG -o FILE.bin --checkpoint CK.pth.tar
    python Evaluation/codec.py compress IMG -o FILE.bin --backbone bmshj2018-hyperprior --quality 3
    python Evaluation/codec.py decompress FILE.bin -o IMG.png [--checkpoint CK.pth.tar]

File layout (big-endian), format version 2: magic ``ICMC`` | format version (u8) | header
length (u16) | header (UTF-8 JSON: codec ``arch`` with backbone, quality, metric and sizes;
``source`` zoo or checkpoint with the checkpoint's file name and SHA-256 prefix; image
``height`` and ``width``; padding; latent ``shape``; number of streams) | per stream:
length (u32) + bytes | SHA-256 of everything before it (32 bytes; version 1 files have none
and still decode, with a warning). A zoo-coded file decodes from the file alone; a
checkpoint-coded file also needs that checkpoint (the header names it and its hash is
checked). Truncated, foreign or corrupted files, and headers that do not fit together
(size over ``--max_pixels``, padding, latent shape, stream count), give a one-line error
before anything is decoded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import warnings
from pathlib import Path

import torch
from compressai.ops import compute_padding

from icm.cli import exit_on_user_error, positive_int, resolve_device
from icm.codec import (
    CompressedImage,
    bits_per_pixel,
    compress_image,
    decompress_image,
    load_codec,
    real_bpp,
)
from icm.config import parse_args_with_config
from icm.io import (
    DEFAULT_MAX_PIXELS,
    atomic_write_bytes,
    file_sha256,
    read_image_tensor,
    write_image,
)

MAGIC = b"ICMC"
FORMAT_VERSION = 2  # 2: a SHA-256 of everything before it ends the file; 1 (no checksum) still decodes
_PREFIX = struct.Struct(">4sBH")  # magic, version, header length
_LENGTH = struct.Struct(">I")
_DIGEST = 32
PAD_MULTIPLE = 64  # icm.codec.compress_image pads to this
LATENT_STRIDES = (16, 64)  # image pixels per latent element of the coded ``shape`` (factorized; hyperpriors)
MAX_STREAMS = 4


class CodecFileError(ValueError):
    """A bitstream file that is truncated, foreign, or of an unknown format version."""


def checkpoint_id(path: str | Path) -> str:
    """The SHA-256 prefix that identifies the checkpoint a bitstream needs (16 hex digits)."""
    return file_sha256(path)[:16]


def pack(compressed: CompressedImage, header: dict) -> bytes:
    """Serialise one image's bitstream with ``header`` (codec description)."""
    if compressed.num_images != 1:
        raise ValueError("a codec file holds exactly one image")
    header = {**header, "height": compressed.image_size[0], "width": compressed.image_size[1],
              "pad": list(compressed.pad), "shape": list(compressed.shape),
              "num_streams": len(compressed.strings)}
    head = json.dumps(header, sort_keys=True).encode("utf-8")
    parts = [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)), head]
    for stream in compressed.strings:
        parts += [_LENGTH.pack(len(stream[0])), stream[0]]
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def unpack(data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[CompressedImage, dict]:
    """Parse a codec file; :class:`CodecFileError` (one line, naming ``source``) when it is
    truncated, foreign, of another format version, corrupted (checksum), or when its header
    does not describe an image this tool would have written (checked before any decoding
    allocates memory: sizes against ``max_pixels``, padding and latent shape against each
    other, stream count and lengths against the file size)."""
    if len(data) < _PREFIX.size:
        if MAGIC.startswith(data[:4]) and data:
            raise CodecFileError(f"{source}: truncated codec file ({len(data)} bytes)")
        raise CodecFileError(f"{source}: not an ICM codec file (no {MAGIC.decode()} magic)")
    magic, version, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CodecFileError(f"{source}: not an ICM codec file (no {MAGIC.decode()} magic)")
    if version not in (1, FORMAT_VERSION):
        raise CodecFileError(f"{source}: codec file format version {version}, this tool reads 1 and {FORMAT_VERSION}")
    if version >= 2:
        if len(data) < _PREFIX.size + _DIGEST:
            raise CodecFileError(f"{source}: truncated codec file ({len(data)} bytes)")
        data, digest = data[:-_DIGEST], data[-_DIGEST:]
        if hashlib.sha256(data).digest() != digest:
            raise CodecFileError(f"{source}: truncated or corrupted codec file (checksum mismatch)")
    else:
        warnings.warn(f"{source}: codec file format version 1 has no checksum; corruption cannot be detected",
                      stacklevel=2)
    offset = _PREFIX.size + head_len
    if len(data) < offset:
        raise CodecFileError(f"{source}: truncated codec file (header cut at {len(data)} bytes)")
    try:
        header = json.loads(data[_PREFIX.size : offset].decode("utf-8"))
        num_streams = int(header["num_streams"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CodecFileError(f"{source}: corrupt codec file header ({e})") from None
    image_size, pad, shape = _checked_geometry(header, source, max_pixels)
    if not 1 <= num_streams <= MAX_STREAMS:
        raise CodecFileError(f"{source}: corrupt codec file header (num_streams {num_streams})")
    strings = []
    for i in range(num_streams):
        if len(data) < offset + _LENGTH.size:
            raise CodecFileError(f"{source}: truncated codec file (stream {i + 1} of {num_streams} missing)")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if len(data) < offset + length:
            raise CodecFileError(
                f"{source}: truncated codec file (stream {i + 1} needs {length} bytes, {len(data) - offset} left)"
            )
        strings.append([data[offset : offset + length]])
        offset += length
    if offset != len(data):
        raise CodecFileError(f"{source}: {len(data) - offset} unexpected bytes after the last stream")
    return CompressedImage(strings=strings, shape=shape, image_size=image_size, pad=pad), header


def _checked_geometry(header: dict, source: str, max_pixels: int) -> tuple[tuple[int, int], tuple, tuple]:
    """(height, width), pad and latent shape of a header, each checked against the others."""
    def integers(key: str, count: int) -> list[int]:
        value = header.get(key)
        values = value if isinstance(value, list) else [value]
        if len(values) != count or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise CodecFileError(f"{source}: corrupt codec file header ({key} {value!r})")
        return values

    (height,), (width,) = integers("height", 1), integers("width", 1)
    if height < 1 or width < 1:
        raise CodecFileError(f"{source}: corrupt codec file header (image {width}x{height})")
    if height * width > max_pixels:
        raise CodecFileError(f"{source}: image of {width}x{height} pixels is over the limit of {max_pixels} "
                             "(--max_pixels, or ICM_MAX_IMAGE_PIXELS)")
    pad = tuple(integers("pad", 4))
    expected, _ = compute_padding(height, width, min_div=PAD_MULTIPLE)
    if pad != tuple(expected):
        raise CodecFileError(f"{source}: corrupt codec file header (pad {list(pad)} for a {width}x{height} image, "
                             f"expected {list(expected)})")
    shape = tuple(integers("shape", 2))
    padded = (height + pad[2] + pad[3], width + pad[0] + pad[1])
    if not any(shape == (padded[0] // s, padded[1] // s) for s in LATENT_STRIDES):
        raise CodecFileError(f"{source}: corrupt codec file header (latent shape {list(shape)} does not fit "
                             f"a {padded[1]}x{padded[0]} padded image)")
    return (height, width), pad, shape


def load_model(checkpoint: str | None, backbone: str | None, quality: int | None, metric: str,
               device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The codec and the header fields that identify it."""
    model, ckpt = load_codec(checkpoint, backbone=backbone, quality=quality, metric=metric, device=device)
    arch = dict(ckpt.get("arch", {}))
    header = {"arch": arch}
    if checkpoint is None:
        header["source"] = {"kind": "zoo"}
    else:
        header["source"] = {"kind": "checkpoint", "file": Path(checkpoint).name, "sha256": checkpoint_id(checkpoint)}
    return model, header


def compress_file(image: str | Path, output: str | Path, checkpoint: str | None = None, backbone: str | None = None,
                  quality: int | None = None, metric: str = "mse", device: str = "cpu") -> dict:
    """Encode ``image`` into ``output``; returns {bytes, bpp, height, width}."""
    dev = resolve_device(device)
    if checkpoint is None and (backbone is None or quality is None):
        raise ValueError("pass --checkpoint CK, or --backbone NAME and --quality Q for a zoo codec")
    model, header = load_model(checkpoint, backbone, quality, metric, dev)
    x = read_image_tensor(image).unsqueeze(0).to(dev)
    compressed = compress_image(model, x)
    data = pack(compressed, header)
    atomic_write_bytes(output, data)
    return {"bytes": len(data), "payload_bytes": compressed.num_bytes, "bpp": real_bpp(compressed),
            "file_bpp": bits_per_pixel(len(data), x.shape[-2], x.shape[-1]),
            "height": int(x.shape[-2]), "width": int(x.shape[-1])}


def decompress_file(bitstream: str | Path, output: str | Path, checkpoint: str | None = None,
                    device: str = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode ``bitstream`` into the image file ``output`` (format from its suffix)."""
    bitstream = Path(bitstream)
    if not bitstream.is_file():
        raise FileNotFoundError(f"{bitstream}: file not found")
    compressed, header = unpack(bitstream.read_bytes(), str(bitstream), max_pixels)
    arch, source = header.get("arch", {}), header.get("source", {})
    dev = resolve_device(device)
    if source.get("kind") == "checkpoint":
        if checkpoint is None:
            raise ValueError(f"{bitstream}: encoded with checkpoint {source.get('file')}; pass --checkpoint PATH to it")
        if checkpoint_id(checkpoint) != source.get("sha256"):
            raise ValueError(f"{bitstream}: encoded with checkpoint {source.get('file')} "
                             f"(sha256 {source.get('sha256')}), but {checkpoint} differs")
        model, _ = load_codec(checkpoint, device=dev)
    else:
        model, _ = load_codec(None, backbone=arch.get("backbone"), quality=arch.get("quality"),
                              metric=arch.get("metric", "mse"), device=dev)
    x_hat = decompress_image(model, compressed)
    write_image(output, x_hat[0].cpu())
    return x_hat


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codec.py",
                                description="Encode an image into a bitstream file, or decode one.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of defaults (section codec); flags win")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="image -> .bin", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("image", help="input image")
    c.add_argument("-o", "--output", required=True, help="output bitstream file")
    c.add_argument("--checkpoint", default=None, help="codec checkpoint (else a zoo codec: --backbone, --quality)")
    c.add_argument("--backbone", default=None, help="CompressAI zoo model, e.g. bmshj2018-hyperprior")
    c.add_argument("--quality", type=positive_int, default=None, help="zoo quality 1..8")
    c.add_argument("--metric", choices=["mse", "ms-ssim"], default="mse", help="zoo training metric")
    d = sub.add_parser("decompress", help=".bin -> image", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("bitstream", help="input bitstream file")
    d.add_argument("-o", "--output", required=True, help="output image (PNG keeps it lossless)")
    d.add_argument("--checkpoint", default=None, help="the checkpoint the file was encoded with (if not zoo)")
    d.add_argument("--max_pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="largest image (height x width) a file may announce; checked before decoding")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args_with_config(build_parser(), argv, "codec")
    if args.command == "compress":
        info = compress_file(args.image, args.output, args.checkpoint, args.backbone, args.quality,
                             args.metric, args.device)
        print(f"{args.output}: {info['bytes']} bytes ({info['payload_bytes']} payload), "
              f"{info['bpp']:.4f} bpp payload, {info['file_bpp']:.4f} bpp with header, "
              f"{info['width']}x{info['height']}")
    else:
        decompress_file(args.bitstream, args.output, args.checkpoint, args.device, args.max_pixels)
        print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
