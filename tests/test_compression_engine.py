"""Tests for icm.compression.engine: optimiser split, train steps on toy pairs, worker errors."""

import gc
import time

import numpy as np
import pytest
import torch
from helpers import colour_shift, toy_image
from torch.utils.data import DataLoader, Dataset

from icm.codec import build_codec
from icm.compression.engine import (
    batches,
    configure_optimizers,
    one_line_worker_error,
    train_step,
)
from icm.compression.losses import PseudoTargetLoss
from icm.io import ImageReadError


def toy_batch(count: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([toy_image(i, size, size) for i in range(count)])
    return x, torch.stack([colour_shift(img) for img in x])


def tiny_codec(seed: int = 0):
    torch.manual_seed(seed)
    return build_codec("bmshj2018-factorized", 1, pretrained=False, N=32, M=48).train()


def test_optimizers_split_quantiles_from_the_network_like_compressai():
    model = tiny_codec()
    optimizer, aux_optimizer = configure_optimizers(model, lr=1e-4, aux_lr=1e-3)
    main = {id(p) for g in optimizer.param_groups for p in g["params"]}
    aux = {id(p) for g in aux_optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert aux == {id(p) for n, p in named.items() if n.endswith(".quantiles")} and aux
    assert main | aux == {id(p) for p in named.values()} and not main & aux
    assert optimizer.param_groups[0]["lr"] == 1e-4 and aux_optimizer.param_groups[0]["lr"] == 1e-3


def run_steps(beta: float, steps: int = 30) -> tuple[list[float], float, float]:
    """Train a tiny codec on toy pairs; returns losses and MSE(x_hat, x_aug) before/after."""
    x, x_aug = toy_batch()
    model = tiny_codec()
    optimizer, aux_optimizer = configure_optimizers(model, lr=3e-3, aux_lr=1e-3)
    criterion = PseudoTargetLoss(lmbda=0.0483, beta=beta)

    def mse_to_augmented() -> float:
        model.eval()
        with torch.no_grad():
            value = torch.mean((model(x)["x_hat"] - x_aug) ** 2).item()
        model.train()
        return value

    before = mse_to_augmented()
    losses = [train_step(model, criterion, x, x_aug, optimizer, aux_optimizer)["loss"].item() for _ in range(steps)]
    return losses, before, mse_to_augmented()


def test_thirty_steps_reduce_the_loss_and_beta_one_learns_the_augmented_target():
    losses, before_1, after_1 = run_steps(beta=1.0)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    _, before_0, after_0 = run_steps(beta=0.0)
    assert before_0 == pytest.approx(before_1)  # same start
    assert before_1 - after_1 > before_0 - after_0  # the target decides what is learnt
    assert after_1 < after_0


def test_train_step_leaves_quantile_gradients_to_the_aux_loss():
    x, x_aug = toy_batch(2)
    model = tiny_codec()
    optimizer, aux_optimizer = configure_optimizers(model, 1e-3, 1e-3)
    quantiles = model.entropy_bottleneck.quantiles.detach().clone()
    out = train_step(model, PseudoTargetLoss(0.01), x, x_aug, optimizer, aux_optimizer)
    assert set(out) >= {"loss", "bpp_loss", "mse_loss", "aux_loss"}
    assert not out["loss"].requires_grad
    assert not torch.equal(model.entropy_bottleneck.quantiles, quantiles)  # aux step moved them


class FailingDataset(Dataset):
    """Item 2 raises ``error`` (in whichever process loads it)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 2:
            raise self.error
        return torch.full((2,), float(index))


@pytest.mark.parametrize("error", [ImageReadError("/data/a b.png: cannot read image (truncated: x: y)"),
                                   ValueError("b.png: size (40, 40) differs from its original")])
def test_worker_errors_come_back_with_their_own_one_line_message(error):
    # Iterated directly, torch would raise the same type with the worker's traceback in its message.
    loader = DataLoader(FailingDataset(error), batch_size=1, num_workers=2)
    seen = []
    started = time.perf_counter()
    with pytest.raises(type(error)) as info:
        for batch in batches(loader):
            seen.append(batch)
    assert str(info.value) == str(error)
    assert "Original Traceback" in str(info.value.__cause__)
    del info
    gc.collect()  # the workers are stopped already, not left to the collector (5 s each)
    assert time.perf_counter() - started < 4.0
    assert [b.tolist() for b in seen] == [[[0.0, 0.0]], [[1.0, 1.0]]]
    assert one_line_worker_error(error) is error  # raised in this process: untouched
