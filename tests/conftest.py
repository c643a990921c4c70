"""Shared pytest set-up: slow-test gating, few threads, deterministic seeds."""

import os

import pytest
import torch

# One thread: on a busy 2-core machine two OpenMP threads spin against each other and tiny
# models run 4-40x slower (measured); ICM_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("ICM_TEST_THREADS", 1)))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def codec_assets(tmp_path_factory):
    """A tiny random codec, its checkpoint and a 70x50 image (module-scoped)."""
    tmp = tmp_path_factory.mktemp("codec")
    torch.manual_seed(0)
    from icm.codec import build_codec, save_codec_checkpoint
    from icm.io import write_image

    model = build_codec("bmshj2018-hyperprior", 2, pretrained=False, N=16, M=24).eval()
    ckpt = tmp / "tiny.pth.tar"
    save_codec_checkpoint(ckpt, model, {"backbone": "bmshj2018-hyperprior", "quality": 2, "metric": "mse"})
    image = tmp / "img.png"
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 50), torch.linspace(0, 1, 70), indexing="ij")
    write_image(image, torch.stack([xx, yy, (xx + yy) / 2]))
    return tmp, model, ckpt, image
