"""The single-file codec tool: round trip, header, and one-line errors on bad files."""

import pytest
import torch

from icm.codec import (
    bits_per_pixel,
    build_codec,
    compress_image,
    decompress_image,
    real_bpp,
    save_codec_checkpoint,
)
from icm.evaluation.codec_file import compress_file, main, pack, unpack
from icm.io import read_image_tensor, write_image


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("codec")
    torch.manual_seed(0)
    model = build_codec("bmshj2018-hyperprior", 2, pretrained=False, N=16, M=24).eval()
    ckpt = tmp / "tiny.pth.tar"
    save_codec_checkpoint(ckpt, model, {"backbone": "bmshj2018-hyperprior", "quality": 2, "metric": "mse"})
    image = tmp / "img.png"
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 50), torch.linspace(0, 1, 70), indexing="ij")
    write_image(image, torch.stack([xx, yy, (xx + yy) / 2]))
    return tmp, model, ckpt, image


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    return e.value.code, err


def test_round_trip_matches_direct_coding(assets, tmp_path, capsys):
    _, model, ckpt, image = assets
    bin_path, out_png = tmp_path / "img.bin", tmp_path / "dec.png"
    assert main(["compress", str(image), "-o", str(bin_path), "--checkpoint", str(ckpt)]) == 0
    assert "bpp" in capsys.readouterr().out
    assert main(["decompress", str(bin_path), "-o", str(out_png), "--checkpoint", str(ckpt)]) == 0
    x = read_image_tensor(image)[None]
    model.update(force=True)
    direct = compress_image(model, x)
    expected = decompress_image(model, direct)[0]
    decoded = read_image_tensor(out_png)
    assert decoded.shape == (3, 50, 70)
    assert torch.equal(decoded, read_image_tensor_from(expected))
    compressed, header = unpack(bin_path.read_bytes())
    assert compressed.strings == direct.strings  # the payload is CompressAI's own strings
    assert header["arch"]["quality"] == 2 and header["arch"]["backbone"] == "bmshj2018-hyperprior"
    assert (header["height"], header["width"]) == (50, 70) and header["source"]["file"] == "tiny.pth.tar"
    again = tmp_path / "again.bin"
    info = compress_file(image, again, str(ckpt))
    assert info["bpp"] == real_bpp(direct) == pytest.approx(direct.num_bytes * 8 / (50 * 70))
    assert info["file_bpp"] == bits_per_pixel(again.stat().st_size, 50, 70)
    assert info["file_bpp"] == pytest.approx(again.stat().st_size * 8 / (50 * 70))
    assert info["file_bpp"] > info["bpp"]  # the header costs bits


def read_image_tensor_from(x):
    return x.clamp(0, 1).mul(255).round().div(255)


def test_truncated_foreign_and_wrong_checkpoint_errors(assets, tmp_path, capsys):
    tmp, model, ckpt, image = assets
    good = tmp_path / "good.bin"
    main(["compress", str(image), "-o", str(good), "--checkpoint", str(ckpt)])
    data = good.read_bytes()
    for cut in (3, 20, len(data) - 1):
        bad = tmp_path / f"cut{cut}.bin"
        bad.write_bytes(data[:cut])
        code, err = run(["decompress", str(bad), "-o", str(tmp_path / "x.png"), "--checkpoint", str(ckpt)], capsys)
        assert code == 2 and "truncated" in err and str(bad) in err and "\n" not in err
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(image.read_bytes())
    code, err = run(["decompress", str(foreign), "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "not an ICM codec file" in err
    code, err = run(["decompress", str(good), "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "pass --checkpoint" in err and "tiny.pth.tar" in err
    other = tmp_path / "other.pth.tar"
    save_codec_checkpoint(other, build_codec("bmshj2018-hyperprior", 2, pretrained=False, N=16, M=24),
                          {"backbone": "bmshj2018-hyperprior", "quality": 2, "metric": "mse"})
    code, err = run(["decompress", str(good), "-o", str(tmp_path / "x.png"), "--checkpoint", str(other)], capsys)
    assert code == 2 and "differs" in err
    assert not (tmp_path / "x.png").exists()
    code, err = run(["compress", str(image), "-o", str(tmp_path / "y.bin")], capsys)
    assert code == 2 and "--checkpoint" in err


def test_pack_rejects_batches(assets):
    _, model, _, image = assets
    model.update(force=True)
    x = read_image_tensor(image)[None].repeat(2, 1, 1, 1)
    with pytest.raises(ValueError, match="exactly one image"):
        pack(compress_image(model, x), {})


def _reheader(data: bytes, change: dict, version: int = 2) -> bytes:
    """The same file with header fields changed and a valid checksum (a forged file)."""
    import hashlib
    import json
    import struct

    head_len = struct.unpack_from(">H", data, 5)[0]
    header = json.loads(data[7 : 7 + head_len])
    header.update(change)
    head = json.dumps(header, sort_keys=True).encode()
    body = data[:4] + bytes([version]) + struct.pack(">H", len(head)) + head + data[7 + head_len : -32]
    return body + hashlib.sha256(body).digest() if version >= 2 else body


def test_forged_and_corrupted_files_are_refused_before_decoding(assets, tmp_path, capsys):
    _, _, ckpt, image = assets
    good = tmp_path / "good.bin"
    main(["compress", str(image), "-o", str(good), "--checkpoint", str(ckpt)])
    data = good.read_bytes()
    out = tmp_path / "x.png"
    flipped = bytearray(data)
    flipped[len(data) - 40] ^= 0xFF  # a payload byte
    cases = {
        "flipped": (bytes(flipped), "checksum mismatch"),
        "huge": (_reheader(data, {"shape": [100, 100]}), "latent shape [100, 100] does not fit"),
        "negative_pad": (_reheader(data, {"pad": [-50000, 0, 0, 0]}), "pad [-50000, 0, 0, 0]"),
        "forged_size": (_reheader(data, {"height": 51}), "expected"),
        "over_limit": (_reheader(data, {"height": 100000, "width": 100000}), "over the limit"),
        "wrong_type": (_reheader(data, {"height": "50"}), "height '50'"),
        "streams": (_reheader(data, {"num_streams": 9}), "num_streams 9"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(content)
        code, err = run(["decompress", str(path), "-o", str(out), "--checkpoint", str(ckpt)], capsys)
        assert code == 2 and message in err and str(path) in err and "\n" not in err, (name, err)
    assert not out.exists()
    small = tmp_path / "limit.bin"
    small.write_bytes(data)
    code, err = run(["decompress", str(small), "-o", str(out), "--checkpoint", str(ckpt), "--max_pixels", "100"], capsys)
    assert code == 2 and "over the limit of 100" in err
    old = tmp_path / "v1.bin"  # format 1: no checksum; decodes, with a warning
    old.write_bytes(_reheader(data, {}, version=1))
    with pytest.warns(UserWarning, match="no checksum"):
        assert main(["decompress", str(old), "-o", str(out), "--checkpoint", str(ckpt)]) == 0
    assert read_image_tensor(out).shape == (3, 50, 70)
