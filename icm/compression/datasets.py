"""(original, augmented) image pairs for stage two.

A stage-one output folder holds ``images/<id>.png`` and its manifests (the hand-over
format, read and written only by ``icm/manifest.py``). Any other image folder gives
``(x, x)`` pairs, so the same trainer fine-tunes or trains a codec on plain images. Several
folders (e.g. one per machine of a cluster run) are read as one set.

Training patches: one random crop and one horizontal flip, applied identically to both
halves of a pair; images smaller than the patch are zero-padded (as CompressAI's eval
pads). Validation patches: the centre crop. The crop and flip of sample ``i`` in epoch
``e`` come from a generator seeded with ``(seed, e, i)``, so they do not depend on worker
processes or on where training was resumed.

Unreadable pairs (a truncated or corrupt PNG in a folder of thousands) do not stop a long
run: the dataset marks the pair in :attr:`PairedImageDataset.unreadable`, a flag tensor in
shared memory that DataLoader workers write and the trainer reads, and returns the next
readable pair in its place. The trainer warns once per epoch and stops only when more than
a small fraction of pairs turned out unreadable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler

from icm.io import ImageReadError, list_images, read_image_tensor
from icm.manifest import ImagePair, manifest_files, read_manifest_pairs

# An unreadable pair is replaced by the next one; this many unreadable in a row is an error.
MAX_CONSECUTIVE_UNREADABLE = 8
# Values of PairedImageDataset.unreadable: which half of a pair could not be read.
READABLE, ORIGINAL_UNREADABLE, AUGMENTED_UNREADABLE = 0, 1, 2


def read_pairs(roots: str | os.PathLike | Sequence[str | os.PathLike]) -> list[ImagePair]:
    """Pairs of stage-one folders (through their manifests) or ``(x, x)`` pairs of image
    folders; several folders are read in turn and must not share an id."""
    if isinstance(roots, str | os.PathLike):
        roots = [roots]
    pairs, where = [], {}
    for root in map(Path, roots):
        if manifest_files(root):
            found = read_manifest_pairs(root)
        else:
            found = [ImagePair(p.relative_to(root).with_suffix("").as_posix(), p, p) for p in list_images(root)]
        if not found:
            raise ValueError(f"{root}: no usable images (need manifest.jsonl or image files)")
        for pair in found:
            if pair.id in where:
                raise ValueError(f"{root}: image id {pair.id!r} is also in {where[pair.id]}; give folders of "
                                 "disjoint images")
            where[pair.id] = root
        pairs += found
    return pairs


def split_pairs(
    pairs: list[ImagePair], val_fraction: float, seed: int = 0
) -> tuple[list[ImagePair], list[ImagePair]]:
    """A seeded random split into (train, validation); validation gets at least one pair
    when ``val_fraction > 0`` and there are two or more pairs."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    num_val = math.ceil(len(pairs) * val_fraction) if len(pairs) > 1 else 0
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    val = sorted(order[:num_val])
    train = sorted(order[num_val:])
    return [pairs[i] for i in train], [pairs[i] for i in val]


def pad_to_size(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad ``x [C,H,W]`` on the bottom/right up to at least ``height x width``."""
    pad_h, pad_w = max(0, height - x.shape[-2]), max(0, width - x.shape[-1])
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


class PairedImageDataset(Dataset):
    """``(x, x_aug)`` float tensors ``[3, P, P]`` in [0, 1], cropped and flipped together.

    A pair with an unreadable image is flagged in ``unreadable`` and the next readable pair
    is returned in its place (see the module docstring).
    """

    def __init__(self, pairs: list[ImagePair], patch_size: int, train: bool = True, seed: int = 0) -> None:
        self.pairs = list(pairs)
        self.patch_size = int(patch_size)
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        # Shared memory: flags set in DataLoader worker processes are seen by the main process.
        self.unreadable = torch.zeros(len(self.pairs), dtype=torch.uint8).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose crops and flips ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The full-size (original, augmented) tensors of pair ``index``."""
        pair = self.pairs[index]
        x = read_image_tensor(pair.original)
        if pair.augmented == pair.original:
            return x, x
        x_aug = read_image_tensor(pair.augmented)
        if x_aug.shape != x.shape:  # skipped and counted like an unreadable pair
            raise ImageReadError(
                f"{pair.augmented}: size {tuple(x_aug.shape[1:])} differs from its original "
                f"{pair.original} {tuple(x.shape[1:])}"
            )
        return x, x_aug

    def unreadable_path(self, index: int) -> Path:
        """The image of pair ``index`` that could not be read (per its flag)."""
        pair = self.pairs[index]
        return pair.original if int(self.unreadable[index]) == ORIGINAL_UNREADABLE else pair.augmented

    def unreadable_paths(self) -> list[Path]:
        """The unreadable image of every pair flagged so far, in dataset order."""
        return [self.unreadable_path(i) for i in self.unreadable.nonzero().flatten().tolist()]

    def load_readable(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`load` of pair ``index``, or of the next readable pair when it is unreadable
        (flagging it); :class:`ImageReadError` after ``MAX_CONSECUTIVE_UNREADABLE`` in a row."""
        tried = []
        for offset in range(min(MAX_CONSECUTIVE_UNREADABLE, len(self.pairs))):
            candidate = (index + offset) % len(self.pairs)
            if self.unreadable[candidate] == READABLE:
                try:
                    return self.load(candidate)
                except ImageReadError as e:
                    unreadable_original = str(e).startswith(f"{self.pairs[candidate].original}:")
                    self.unreadable[candidate] = ORIGINAL_UNREADABLE if unreadable_original else AUGMENTED_UNREADABLE
            tried.append(self.unreadable_path(candidate))
        raise ImageReadError(
            f"{tried[0]}: unreadable, and so are the next {len(tried) - 1} pairs (last: {tried[-1]}); "
            "check the dataset"
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, x_aug = self.load_readable(index)
        both = torch.cat([x, x_aug]) if x_aug is not x else x
        size = self.patch_size
        both = pad_to_size(both, size, size)
        height, width = both.shape[-2:]
        if self.train:
            seed = (self.seed * 1_000_003 + self.epoch * 10_007 + index) % (2**63)
            generator = torch.Generator().manual_seed(seed)
            top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
            flip = bool(torch.rand((), generator=generator) < 0.5)
        else:
            top, left, flip = (height - size) // 2, (width - size) // 2, False
        both = both[:, top : top + size, left : left + size]
        if flip:
            both = both.flip(-1)
        both = both.contiguous()
        if both.shape[0] == 3:
            return both, both
        return both[:3], both[3:]


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle per epoch, one shard per rank) that can
    start part-way through an epoch, so ``--resume`` sees the same data order as an
    uninterrupted run. Works without a process group when ``num_replicas``/``rank`` are given."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start_index = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index
