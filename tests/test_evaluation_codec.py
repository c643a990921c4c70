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
from icm.io import read_image_tensor


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    return e.value.code, err


def test_round_trip_matches_direct_coding(codec_assets, tmp_path, capsys):
    _, model, ckpt, image = codec_assets
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


def test_truncated_foreign_and_wrong_checkpoint_errors(codec_assets, tmp_path, capsys):
    tmp, model, ckpt, image = codec_assets
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


def test_pack_rejects_batches(codec_assets):
    _, model, _, image = codec_assets
    model.update(force=True)
    x = read_image_tensor(image)[None].repeat(2, 1, 1, 1)
    with pytest.raises(ValueError, match="exactly one image"):
        pack(compress_image(model, x), {})
