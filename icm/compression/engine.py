"""Training pieces for stage two: optimisers, one train step, validation, one-line data
loader worker errors, RNG state and the distributed (torchrun) plumbing. The loop itself
lives in ``train_compression.py``.

The recipe follows CompressAI's ``examples/train.py``: Adam on every parameter except the
entropy bottlenecks' ``quantiles``, a second Adam on those driven by ``aux_loss()``,
gradient clipping on the main step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from icm.codec import unwrap

AUX_PARAMETER_SUFFIX = ".quantiles"


def configure_optimizers(
    model: nn.Module, lr: float, aux_lr: float
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for the network and Adam for the entropy-bottleneck quantiles (aux loss)."""
    named = dict(unwrap(model).named_parameters())
    aux_names = sorted(n for n, p in named.items() if n.endswith(AUX_PARAMETER_SUFFIX) and p.requires_grad)
    main_names = sorted(n for n, p in named.items() if not n.endswith(AUX_PARAMETER_SUFFIX) and p.requires_grad)
    if not aux_names:
        raise ValueError("model has no entropy-bottleneck quantiles: not a CompressAI codec?")
    optimizer = torch.optim.Adam([named[n] for n in main_names], lr=lr)
    aux_optimizer = torch.optim.Adam([named[n] for n in aux_names], lr=aux_lr)
    return optimizer, aux_optimizer


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    x: torch.Tensor,
    x_aug: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    aux_optimizer: torch.optim.Optimizer,
    clip_max_norm: float = 1.0,
) -> dict[str, torch.Tensor]:
    """One step of both optimisers; returns detached loss terms (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    aux_optimizer.zero_grad(set_to_none=True)
    output = model(x)  # the encoder always sees the original
    losses = criterion(output, x, x_aug)
    losses["loss"].backward()
    if clip_max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
    optimizer.step()

    aux_loss = unwrap(model).aux_loss()
    aux_loss.backward()
    average_aux_gradients(model)
    aux_optimizer.step()
    logged = {k: v.detach() for k, v in losses.items()}
    logged["aux_loss"] = aux_loss.detach()
    return logged


@torch.no_grad()
def evaluate(
    model: nn.Module, criterion: nn.Module, loader, device: torch.device
) -> dict[str, float]:
    """Mean loss terms over ``loader`` (summed over all ranks under torchrun)."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=device, dtype=torch.float64)
    for x, x_aug in batches(loader):
        x, x_aug = x.to(device, non_blocking=True), x_aug.to(device, non_blocking=True)
        losses = criterion(unwrap(model)(x), x, x_aug)
        for key, value in losses.items():
            sums[key] = sums.get(key, 0) + value.double() * x.shape[0]
        count += x.shape[0]
    model.train(was_training)
    if not sums:
        return {}
    keys = sorted(sums)
    totals = torch.stack([sums[k] for k in keys] + [count])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    return {k: (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}


def one_line_worker_error(error: Exception) -> Exception:
    """``error`` as raised in the DataLoader worker, without the worker traceback that torch
    puts into the message ("Caught X in DataLoader worker process 0. Original Traceback ...");
    ``error`` itself when it did not come from a worker."""
    text = str(error)
    if "Original Traceback" not in text:
        return error
    # The traceback ends with "<module>.<Type>: <original message>".
    for line in reversed(text.splitlines()):
        prefix, separator, message = line.partition(": ")
        if separator and not line.startswith(" ") and prefix.rsplit(".", 1)[-1] == type(error).__name__:
            try:
                return type(error)(message)
            except Exception:  # noqa: BLE001 - a type that takes other arguments: keep torch's
                return error
    return error


def batches(loader: Iterable) -> Iterator:
    """The batches of ``loader``; an error in a worker process is re-raised with its own
    one-line message (see :func:`one_line_worker_error`)."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as e:
            if "Original Traceback" not in str(e):
                raise
            # torch leaves the failed iterator in a reference cycle, and shutting its workers
            # down from the garbage collector waits 5 s per worker: stop them now.
            shutdown_workers = getattr(iterator, "_shutdown_workers", None)
            if shutdown_workers is not None:
                shutdown_workers()
            raise one_line_worker_error(e) from e
        yield batch


# ----------------------------------------------------------------------------- RNG state


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a torchrun job (world size 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  # under torchrun: DDP even with one process (scripts/gpu_check.sh tests NCCL so)

    @property
    def enabled(self) -> bool:
        return self.launched or self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the torchrun process group (NCCL on GPU, gloo on CPU) under torchrun (even with
    one process) or when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return DistributedContext()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistributedContext(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size(), True)


def wrap_distributed(model: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the network parameters.

    The quantiles get no gradient from the main loss (they only feed ``aux_loss``, which
    runs outside the DDP forward), so DDP ignores them; :func:`average_aux_gradients`
    all-reduces their gradients instead and rank 0's values are broadcast here. Buffers
    are synced at construction but not on every forward: the entropy coder's CDF tables change size when
    rank 0 refreshes them for a checkpoint, and the codecs have no running statistics.
    """
    if not context.enabled:
        return model
    aux_names = [n for n, _ in model.named_parameters() if n.endswith(AUX_PARAMETER_SUFFIX)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, aux_names)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name in aux_names:
            dist.broadcast(named[name].data, src=0)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


def average_aux_gradients(model: nn.Module) -> None:
    """All-reduce (mean) the quantiles' gradients across ranks; no-op without DDP."""
    if not isinstance(model, DistributedDataParallel):
        return
    grads = [
        p.grad for n, p in model.module.named_parameters() if n.endswith(AUX_PARAMETER_SUFFIX) and p.grad is not None
    ]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_objects(obj, context: DistributedContext) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without DDP)."""
    if not context.enabled:
        return [obj]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def replica_max_difference(model: nn.Module, context: DistributedContext) -> float:
    """Largest absolute difference of any parameter between this rank and rank 0
    (max over ranks): 0.0 when all replicas hold identical weights."""
    if not context.enabled:
        return 0.0
    flat = torch.cat([p.detach().flatten().double() for p in unwrap(model).parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    difference = (flat - reference).abs().max()
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    return difference.item()
