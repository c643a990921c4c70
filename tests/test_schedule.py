import pytest
import torch

from icm.schedule import warmup_cosine


def test_warmup_then_cosine():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=10, total_steps=110)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[5] == pytest.approx(0.001 + 0.999 * 0.5)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.01 + 0.99 * 0.5)  # half way through the cosine
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > 0.01
