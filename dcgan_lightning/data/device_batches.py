"""Small training sets held on the training device: batches are indexed there, no loader at all.

A set that fits a share of the device's memory (Picasso's 439 images at 64 px are 5 MB) is copied
to the device once. Each epoch the order of its indices comes from the same sampler Lightning's
DataLoader path would use (RandomSampler on one rank, DistributedSampler on many), is moved to
the device once, and every batch is one `index_select` there: no worker, no collation, no
host-to-device copy per batch. Larger sets keep the pinned-memory DataLoader.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler, RandomSampler, Sampler, SequentialSampler

log = logging.getLogger(__name__)

ON_DEVICE_CHOICES = ("auto", True, False)


class DeviceBatches:
    """An iterable of uint8 batches indexed from `images` (already on the device) in `sampler`'s
    order. `sampler` is public because Lightning calls its `set_epoch` each epoch."""

    def __init__(
        self, images: torch.Tensor, sampler: Sampler[int], batch_size: int, drop_last: bool
    ) -> None:
        self.images, self.sampler = images, sampler
        self.batch_size, self.drop_last = batch_size, drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        # A DataLoader's iterator draws its workers' base seed from the global generator before
        # its sampler draws a seed: draw it too, so both paths leave the same random state for
        # flips, dropout and the next epoch's order.
        torch.empty((), dtype=torch.int64).random_()
        order = torch.tensor(list(self.sampler), dtype=torch.long).to(self.images.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.images.index_select(0, order[start : start + self.batch_size])


def training_sampler(
    num_images: int, shuffle: bool, distributed_kwargs: dict | None
) -> Sampler[int]:
    """The sampler Lightning's DataLoader path would use: its own DistributedSampler (seeded from
    `PL_GLOBAL_SEED`, padded to equal shares) on several ranks, else Random/SequentialSampler."""
    indices = range(num_images)
    if distributed_kwargs and distributed_kwargs.get("num_replicas", 1) > 1:
        seed = int(os.getenv("PL_GLOBAL_SEED", 0))
        return DistributedSampler(indices, shuffle=shuffle, seed=seed, **distributed_kwargs)
    return RandomSampler(indices) if shuffle else SequentialSampler(indices)


def device_memory(device: torch.device) -> int | None:
    """Total memory of an accelerator, in bytes; None for the CPU or when unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "mps":
        return torch.mps.recommended_max_memory()
    return None


def holds_on_device(
    setting: bool | str, device: torch.device, nbytes: int, fraction: float
) -> bool:
    """Whether `nbytes` of images go to `device`: `True`/`False` as set; `auto` when the device is
    an accelerator and they fit `fraction` of its memory (on the CPU no copy is needed)."""
    if setting != "auto":
        return bool(setting)
    total = device_memory(device)
    if total is None:
        return False
    fits = nbytes <= fraction * total
    log.info("Training images (%.1f MB) %s %.0f%% of %s memory: %s", nbytes / 2**20,
             "fit" if fits else "exceed", 100 * fraction, device,
             "held on the device" if fits else "streamed by the DataLoader")  # fmt: skip
    return fits
