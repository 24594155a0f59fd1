"""Streaming batches from a split held once in host memory (``torch.utils.data.DataLoader``).

The shuffled order of each epoch is drawn in the main process from the run's shuffle generator
(``torch.randperm``, as the in-memory loop always did), then cut into batches; workers only gather
and augment the batches they are handed. A batch's augmentation is seeded by (run seed, epoch,
batch number), never by the worker that happens to build it, so the same seed gives the same
batches whatever ``workers`` is. On CUDA, batches come from pinned memory and are copied with
``non_blocking=True``: the device holds a few batches, never the split. Evaluation never augments.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Sampler

#: Mixes (seed, epoch, batch) into one 63-bit seed for a batch's augmentation generator.
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation: random crop of ``pad_crop`` pixels after padding (``zero``: the
    CIFAR recipe of He et al. 2016 used by Madry, TRADES, Free-AT and Fast-AT; ``reflect``: PGN's
    4-pixel reflect-pad shift) and a horizontal flip with probability 1/2 when ``hflip``."""

    pad_crop: int = 0
    hflip: bool = False
    pad_mode: Literal["zero", "reflect"] = "zero"

    def __bool__(self) -> bool:
        return self.pad_crop > 0 or self.hflip


def batch_seed(seed: int, epoch: int, number: int) -> int:
    """A seed for batch ``number`` of ``epoch`` of the run seeded ``seed`` (splitmix-style mix)."""
    value = (seed * _MIX[0] + epoch * _MIX[1] + number * _MIX[2]) & 0xFFFFFFFFFFFFFFFF
    value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def augment_batch(x: torch.Tensor, spec: Augment, generator: torch.Generator) -> torch.Tensor:
    """Randomly shifted crops and flips of an NCHW batch, one draw per image, batched."""
    n, channels, height, width = x.shape
    if spec.pad_crop:
        pad = spec.pad_crop
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if spec.pad_mode == "reflect" else "constant")
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(height))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(channels)[None, :, None, None], rows, cols]
    if spec.hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


class _Gather(torch.utils.data.Dataset):
    """Maps a planned batch ``(epoch, number, indices)`` to its (augmented) images, labels, indices."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: Augment | None, seed: int) -> None:
        self.x, self.y, self.augment, self.seed = x, y, augment, seed

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, item: tuple[int, int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, number, index = item
        x = self.x[index]
        if self.augment:
            x = augment_batch(x, self.augment, torch.Generator().manual_seed(batch_seed(self.seed, epoch, number)))
        return x, self.y[index], index


class _Plan(Sampler):
    """The current epoch's batches; set in the main process before each epoch is iterated."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, torch.Tensor]] = []

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class TrainStream:
    """Shuffled training batches of a host-memory split, moved to ``device`` one at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: torch.Generator,
                 device: torch.device, workers: int = 0, augment: Augment | None = None, seed: int = 0) -> None:
        self.n, self.batch_size, self.shuffle, self.device = x.shape[0], batch_size, shuffle, device
        self.plan = _Plan()
        cuda = device.type == "cuda"
        # The loader's own generator: a DataLoader without one draws its base seed from the global RNG.
        self.loader = DataLoader(_Gather(x, y, augment, seed), sampler=self.plan, batch_size=None,
                                 num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0,
                                 generator=torch.Generator().manual_seed(seed),
                                 prefetch_factor=4 if workers > 0 else None)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This epoch's batches (x, y, indices), all on the device."""
        order = torch.randperm(self.n, generator=self.shuffle)
        self.plan.items = [(epoch, number, order[begin:begin + self.batch_size])
                           for number, begin in enumerate(range(0, self.n, self.batch_size))]
        for x, y, index in self.loader:
            yield (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True),
                   index.to(self.device, non_blocking=True))


def eval_batches(x: torch.Tensor, y: torch.Tensor | None, batch_size: int,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Consecutive batches of a host (or device) split, each copied to ``device``; never augmented."""
    for begin in range(0, x.shape[0], batch_size):
        xb = x[begin:begin + batch_size].to(device, non_blocking=True)
        yb = y[begin:begin + batch_size].to(device, non_blocking=True) if y is not None else None
        yield xb, yb
