"""Tests for icm.codec: zoo names, building, checkpoints and real bitstreams."""

import time

import pytest
import torch
import torch.nn.functional as F
from compressai.models import FactorizedPrior, ScaleHyperprior
from compressai.ops import compute_padding

from icm import codec
from icm.codec import (
    CompressedImage,
    build_codec,
    compress_image,
    crop,
    decompress_image,
    estimated_bpp,
    lambda_for,
    load_codec,
    pad_to_multiple,
    perturbation_share,
    real_bpp,
    resolve_backbone,
    save_codec_checkpoint,
)


def small_codec(seed: int = 0) -> ScaleHyperprior:
    torch.manual_seed(seed)
    model = build_codec("bmshj2018", quality=1, pretrained=False, N=32, M=48)
    model.update(force=True)
    return model.eval()


def test_lambda_for_matches_compressai_table_and_rejects_bad_input():
    assert lambda_for(3) == 0.0067
    assert lambda_for(8, "mse") == 0.18
    assert lambda_for(1, "ms-ssim") == 2.40
    assert lambda_for(8, "ms-ssim") == 220.0
    lambdas = codec.QUALITY_LAMBDAS["mse"]
    assert all(a < b for a, b in zip(lambdas, lambdas[1:]))
    with pytest.raises(ValueError, match="quality 9"):
        lambda_for(9)
    with pytest.raises(ValueError, match="metric"):
        lambda_for(3, "psnr")


def test_every_fixed_rate_zoo_name_and_alias_resolves():
    from compressai.zoo import image_models

    for name in image_models:
        if name.endswith("-vbr"):
            with pytest.raises(ValueError, match="variable-rate"):
                resolve_backbone(name)
        else:
            assert resolve_backbone(name) == name
    assert resolve_backbone("bmshj2018") == "bmshj2018-hyperprior"
    assert resolve_backbone("MBT2018_mean") == "mbt2018-mean"
    with pytest.raises(ValueError, match="unknown backbone 'jpeg'"):
        resolve_backbone("jpeg")


@pytest.mark.parametrize("name", sorted(codec.ARCHITECTURES))
def test_build_codec_random_init_small_sizes_runs_forward(name):
    sizes = {"N": 16} if name.startswith("cheng2020") else {"N": 16, "M": 24}
    model = build_codec(name, quality=1, pretrained=False, **sizes)
    assert isinstance(model, codec.ARCHITECTURES[name])
    out = model(torch.rand(1, 3, 64, 64))
    assert out["x_hat"].shape == (1, 3, 64, 64)
    assert torch.isfinite(estimated_bpp(out["likelihoods"], 64 * 64))


def test_build_codec_zoo_sizes_and_quality_range():
    model = build_codec("bmshj2018-factorized", quality=6, pretrained=False)
    assert (model.N, model.M) == (192, 320)
    with pytest.raises(ValueError, match="quality 7 out of range 1..6"):
        build_codec("cheng2020-anchor", quality=7, pretrained=False)
    with pytest.raises(ValueError, match="pretrained"):
        build_codec("bmshj2018", quality=3, pretrained=True, N=32, M=48)


def test_pad_to_multiple_matches_compressai_eval_and_crop_inverts():
    x = torch.rand(1, 3, 70, 50)
    padded, pad = pad_to_multiple(x, 64)
    assert padded.shape == (1, 3, 128, 64)
    reference_pad, _ = compute_padding(70, 50, min_div=64)
    assert pad == reference_pad
    assert torch.equal(padded, F.pad(x, reference_pad, mode="constant", value=0))
    left, right, top, bottom = pad
    assert (left, right, top, bottom) == (7, 7, 29, 29)  # centred
    assert padded[..., :top, :].abs().sum() == 0
    assert torch.equal(crop(padded, pad), x)


def test_real_round_trip_matches_forward_pass_and_counts_compressai_bytes():
    model = small_codec()
    x = torch.rand(1, 3, 70, 50)
    compressed = compress_image(model, x)
    assert isinstance(compressed, CompressedImage)
    assert compressed.image_size == (70, 50)

    reference = model.compress(pad_to_multiple(x, 64)[0])
    reference_bytes = sum(len(s) for stream in reference["strings"] for s in stream)
    assert compressed.num_bytes == reference_bytes > 0
    bpp = real_bpp(compressed)
    assert bpp == pytest.approx(reference_bytes * 8 / (70 * 50))

    x_hat = decompress_image(model, compressed)
    assert x_hat.shape == x.shape
    assert 0 <= x_hat.min() and x_hat.max() <= 1
    # The decoder reproduces the eval-mode forward pass (same rounding), so padding,
    # cropping and the strings are all right.
    with torch.no_grad():
        padded, pad = pad_to_multiple(x, 64)
        forward_x_hat = crop(model(padded)["x_hat"], pad).clamp(0, 1)
    assert torch.allclose(x_hat, forward_x_hat, atol=1e-3)


def test_batch_round_trip_counts_every_image():
    model = small_codec()
    x = torch.rand(2, 3, 64, 64)
    compressed = compress_image(model, x)
    assert compressed.num_images == 2
    single = [compress_image(model, x[i : i + 1]).num_bytes for i in range(2)]
    assert compressed.num_bytes == sum(single)
    assert real_bpp(compressed) == pytest.approx(sum(single) * 8 / (2 * 64 * 64))
    assert decompress_image(model, compressed).shape == x.shape


def test_estimated_bpp_is_sum_of_minus_log2_likelihoods():
    likelihoods = {"y": torch.full((1, 4, 2, 2), 0.5), "z": torch.full((1, 2, 1, 1), 0.25)}
    assert estimated_bpp(likelihoods, 8).item() == pytest.approx((16 * 1 + 2 * 2) / 8)


def test_checkpoint_saves_fresh_cdfs_and_reloads_weights_only(tmp_path):
    model = small_codec()
    with torch.no_grad():
        model.entropy_bottleneck.quantiles.add_(0.7)  # stale CDFs until update(force=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.rand(1, 3, 64, 64))["x_hat"].mean().backward()
    optimizer.step()
    stale_cdf = model.entropy_bottleneck._quantized_cdf.clone()
    path = tmp_path / "codec.pth.tar"
    save_codec_checkpoint(
        path,
        model,
        arch={"backbone": "bmshj2018", "quality": 1, "metric": "mse"},
        extra={"optimizer": optimizer.state_dict(), "epoch": 3, "rng": {"torch": torch.get_rng_state()}},
    )

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "icm-codec"
    assert raw["arch"] == {"backbone": "bmshj2018-hyperprior", "quality": 1, "metric": "mse", "N": 32, "M": 48}
    assert raw["epoch"] == 3 and "state" in raw["optimizer"]
    saved_cdf = raw["state_dict"]["entropy_bottleneck._quantized_cdf"]
    assert saved_cdf.shape != stale_cdf.shape or not torch.equal(saved_cdf, stale_cdf)

    loaded, checkpoint = load_codec(path)
    assert isinstance(loaded, ScaleHyperprior) and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(1, 3, 64, 64)
    assert compress_image(loaded, x).strings == compress_image(model, x).strings
    assert checkpoint["epoch"] == 3


def test_save_rejects_extras_that_shadow_the_model(tmp_path):
    with pytest.raises(ValueError, match="state_dict"):
        save_codec_checkpoint(tmp_path / "c.pth", small_codec(), {"backbone": "bmshj2018"},
                              extra={"state_dict": {}})
    assert not list(tmp_path.iterdir())


def test_loads_compressai_training_checkpoint_and_bare_state_dict(tmp_path):
    model = small_codec(seed=1)
    # examples/train.py saves the DataParallel/DDP state dict before update(): CDFs stale.
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 7, "state_dict": state, "loss": 1.0, "optimizer": {}}, tmp_path / "ca.pth.tar")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    x = torch.rand(1, 3, 64, 64)
    expected = compress_image(model, x).strings
    for name in ("ca.pth.tar", "bare.pth"):
        loaded, checkpoint = load_codec(tmp_path / name, backbone="bmshj2018", quality=1)
        assert (loaded.N, loaded.M) == (32, 48)
        assert checkpoint["arch"]["backbone"] == "bmshj2018-hyperprior"
        assert compress_image(loaded, x).strings == expected
    with pytest.raises(ValueError, match="no architecture record"):
        load_codec(tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="not a bmshj2018-factorized state dict"):
        load_codec(tmp_path / "bare.pth", backbone="bmshj2018-factorized")


def test_unreadable_checkpoint_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth: not a PyTorch checkpoint") as info:
        load_codec(bad, backbone="bmshj2018")
    assert "\n" not in str(info.value)
    bad.write_bytes(b"PK\x03\x04" + bytes(60))  # looks like torch.save's zip, is not one
    with pytest.raises(ValueError, match="bad.pth: cannot load as a weights-only checkpoint") as info:
        load_codec(bad, backbone="bmshj2018")
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.pth: checkpoint not found"):
        load_codec(tmp_path / "missing.pth", backbone="bmshj2018")


def test_offline_pretrained_is_fast_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(codec, "ZOO_HOST", "compressai.invalid")  # never resolves
    start = time.monotonic()
    with pytest.raises(codec.PretrainedWeightsUnavailable) as info:
        build_codec("bmshj2018", quality=3)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert "bmshj2018-hyperprior-3-6d87be32.pth.tar" in message and "--checkpoint PATH" in message
    assert isinstance(info.value, FileNotFoundError)  # a user error for icm.cli


def test_pretrained_loads_from_torch_hub_cache_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(codec, "ZOO_HOST", "compressai.invalid")
    url = codec.zoo_weights_url("bmshj2018-factorized", 1)
    torch.manual_seed(3)
    zoo_like = FactorizedPrior(128, 192)
    zoo_like.update(force=True)
    cache_file = codec.zoo_weights_cache_path(url)
    cache_file.parent.mkdir(parents=True)
    torch.save(zoo_like.state_dict(), cache_file)
    # Not the real zoo file: its hash does not match the name's, so it is refused ...
    with pytest.raises(ValueError, match="SHA-256 does not start with .* as its name says"):
        build_codec("bmshj2018-factorized", quality=1, pretrained=True)
    # ... and a file whose hash matches its name passes the same check.
    import hashlib

    named = tmp_path / f"x-{hashlib.sha256(cache_file.read_bytes()).hexdigest()[:8]}.pth.tar"
    named.write_bytes(cache_file.read_bytes())
    codec.check_zoo_file_hash(named)
    monkeypatch.setattr(codec, "check_zoo_file_hash", lambda path: None)  # stand-in for the real file

    model = build_codec("bmshj2018-factorized", quality=1, pretrained=True)
    assert isinstance(model, FactorizedPrior)
    assert torch.equal(model.g_a[0].weight, zoo_like.g_a[0].weight)
    with pytest.raises(ValueError, match="no pretrained bmshj2018-factorized-relu"):
        build_codec("bmshj2018-factorized-relu", quality=1, pretrained=True)


def test_perturbation_share_projects_the_change_on_the_perturbation():
    delta = torch.tensor([[2.0, 0.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).view(3, 1, 2, 2)
    moved = torch.tensor([[1.0, 5.0, -1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [-2.0, -2.0, -2.0, -2.0]]).view(3, 1, 2, 2)
    share = perturbation_share(moved, delta)
    assert share.shape == (3,) and share[0] == 0.5 and share[2] == -2.0  # (2 + 2) / 8; opposite, twice as large
    assert share[1].isnan()  # no perturbation: no share (not 0)
