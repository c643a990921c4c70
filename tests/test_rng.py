import random

import numpy as np
import torch

from icm.rng import capture_rng_state, restore_rng_state, seed_everything


def test_rng_state_round_trips_and_survives_weights_only_save(tmp_path):
    seed_everything(3)
    np.random.randn()  # leave a cached gaussian in NumPy's state
    random.gauss(0, 1)  # and one in Python's
    state = capture_rng_state()
    torch.save({"rng": [state]}, tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"][0])
    again = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3))
    assert expected[:4] == again[:4] and torch.equal(expected[4], again[4])


def test_seed_everything_is_deterministic():
    seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(2))
    seed_everything(7)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])
