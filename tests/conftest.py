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
