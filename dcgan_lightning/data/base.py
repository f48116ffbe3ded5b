"""The base of every datamodule: uint8 images in memory, batches normalised on the device."""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from dcgan_lightning.data.device_batches import (
    ON_DEVICE_CHOICES,
    DeviceBatches,
    holds_on_device,
    training_sampler,
)
from dcgan_lightning.errors import UserError
from dcgan_lightning.models.generator import channel_schedule

log = logging.getLogger(__name__)

# Seeds the one permutation of a dataset that picks its held-out slice and the metrics' real set:
# a constant, not the run's seed, so both are the same in every run of that dataset.
SPLIT_SEED = 0


Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # images, or (images, labels)


class UInt8Images(Dataset):
    """Images (N, C, H, W) uint8, indexed a whole batch at a time (no per-item collation); with
    `labels` (N,) int64, each batch is `(images, labels)`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Batch:
        return self._pick(index)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        return self._pick(torch.as_tensor(indices))

    def _pick(self, index: int | torch.Tensor) -> Batch:
        if self.labels is None:
            return self.images[index]
        return self.images[index], self.labels[index]


def stack_batch(batch: Batch) -> Batch:
    """collate_fn for `UInt8Images`: its `__getitems__` already returns the stacked batch."""
    return batch


def fixed_order(num_images: int) -> torch.Tensor:
    """A permutation of range(num_images) that depends on num_images alone."""
    return torch.randperm(num_images, generator=torch.Generator().manual_seed(SPLIT_SEED))


def to_signed(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images as the models see them: float in [-1, 1]."""
    return batch.float().div_(127.5).sub_(1.0)


def check_holdout(holdout: int | float | None) -> None:
    """`data.holdout` is off (null, 0), a number of images, or a fraction in (0, 1)."""
    count = isinstance(holdout, int) and not isinstance(holdout, bool) and holdout >= 0
    fraction = isinstance(holdout, float) and 0 <= holdout < 1
    if holdout is not None and not (count or fraction):
        raise UserError(
            f"data.holdout={holdout!r}: give a number of images (e.g. 30) or a fraction in (0, 1) "
            "(e.g. 0.1), or null for none"
        )


def holdout_count(holdout: int | float | None, num_images: int) -> int:
    """How many of `num_images` to hold out: `holdout` images, or that fraction (at least one)."""
    if not holdout:
        return 0
    if isinstance(holdout, float):
        return max(1, round(holdout * num_images))
    return holdout


def check_images_per_rank(num_images: int, world_size: int, batch_size: int) -> None:
    """Raise a `UserError` unless every rank trains at least one full batch.

    Lightning's DistributedSampler pads the set to give each rank ceil(N / world_size) images and
    the loader drops the last partial batch: with fewer than `batch_size` per rank an epoch is
    0 batches, which Lightning only logs before reporting the run complete.
    """
    per_rank = math.ceil(num_images / world_size)
    if per_rank >= batch_size:
        return
    if world_size == 1:
        raise UserError(
            f"{num_images} images, fewer than data.batch_size={batch_size}: "
            f"set data.batch_size<={num_images}"
        )
    fits = [w for w in range(world_size - 1, 0, -1) if math.ceil(num_images / w) >= batch_size]
    fewer = f"train on at most {fits[0]} devices" if fits else "train on one device"
    raise UserError(
        f"{num_images} images on {world_size} ranks (world size {world_size}) is {per_rank} per "
        f"rank, fewer than data.batch_size={batch_size}: no rank would train a single batch. "
        f"Set data.batch_size<={per_rank}, or {fewer}"
    )


class ImageDataModule(LightningDataModule, ABC):
    """Subclasses implement `load_images`: the training set as uint8 (N, channels, size, size).

    Decoding and resizing happen once; the loader only indexes the tensor. Conversion to [-1, 1]
    and random horizontal flips run on the batch after it reaches the device, so uint8 (a quarter of
    the bytes of float32) is what crosses to the GPU. With `on_device` (`auto`: when the set fits
    `device_memory_fraction` of an accelerator's memory) the set crosses once, and training
    batches are indexed on the device (`device_batches`).

    `holdout` (a number of images or a fraction) takes images out of the set before anything else
    sees it, as `holdout_images`: never trained on, never in the metrics' real set; they show how
    far D memorises (`callbacks/overfitting.py`). `images` is then the rest, the training set.
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: int = 3,
        batch_size: int = 64,
        num_workers: int = 0,
        flip: bool = False,
        on_device: bool | str = "auto",
        device_memory_fraction: float = 0.25,
        holdout: int | float | None = None,
        labels: bool = False,
    ) -> None:
        super().__init__()
        channel_schedule(image_size, 1)  # validates image_size before any data is touched
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if on_device not in ON_DEVICE_CHOICES:
            raise ValueError(f"on_device must be auto, true or false, got {on_device!r}")
        if not 0 < device_memory_fraction <= 1:
            raise ValueError(
                f"device_memory_fraction must be in (0, 1], got {device_memory_fraction}"
            )
        check_holdout(holdout)
        self.holdout = holdout
        self.holdout_images: torch.Tensor | None = None  # uint8, never trained on
        self.holdout_labels: torch.Tensor | None = None  # their classes, with `labels`
        self.on_device, self.device_memory_fraction = on_device, device_memory_fraction
        self.device_images: torch.Tensor | None = None  # the set on the device, once moved
        self.image_size, self.channels = image_size, channels
        self.batch_size, self.num_workers, self.flip = batch_size, num_workers, flip
        self.images: torch.Tensor | None = None
        # With `labels`: each image's class index (int64, N) and the classes' names.
        self.with_labels = labels
        self._class_names: list[str] | None = None
        self.labels: torch.Tensor | None = None
        self.device_labels: torch.Tensor | None = None

    @property
    def class_names(self) -> list[str]:
        """The classes' names, index order, known before any image is read; [] without labels."""
        if self.with_labels and self._class_names is None:
            self._class_names = self.list_classes()
        return self._class_names or []

    @property
    def num_classes(self) -> int:
        """0 without labels: what `train.train` hands the model, as it does image size."""
        return len(self.class_names)

    def list_classes(self) -> list[str]:
        """Subclasses with labels name their classes here (cheap: no image is decoded)."""
        raise UserError(f"data.labels=true: {type(self).__name__} has no labels")

    def load_labels(self) -> torch.Tensor:
        """The class index of each image `load_images` returned, int64 (N,)."""
        raise UserError(f"data.labels=true: {type(self).__name__} has no labels")

    @property
    def class_counts(self) -> list[int]:
        """Training images per class (after `setup`)."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    @abstractmethod
    def load_images(self) -> torch.Tensor:
        """The training images, uint8 (N, channels, image_size, image_size)."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """A short string naming exactly these training images: keys caches of their statistics."""

    def setup(self, stage: str | None = None) -> None:
        if self.images is None:
            images = self.load_images()
            expected = (self.channels, self.image_size, self.image_size)
            if images.dtype != torch.uint8 or tuple(images.shape[1:]) != expected:
                got = f"{images.dtype} {tuple(images.shape)}"
                raise RuntimeError(f"{type(self).__name__} gave {got}, expected uint8 {expected}")
            labels = (
                self._checked_labels(self.load_labels(), len(images)) if self.with_labels else None
            )
            self.images = self._hold_out(images)
            if labels is not None:  # the labels, in `_hold_out`'s order
                kept = len(self.images)
                if kept == len(labels):
                    self.labels = labels
                else:
                    order = fixed_order(len(labels))
                    self.labels, self.holdout_labels = labels[order[:kept]], labels[order[kept:]]

    def _checked_labels(self, labels: torch.Tensor, n: int) -> torch.Tensor:
        """`labels` as int64, checked against the images and classes; logs the class counts."""
        names = self.class_names
        in_range = n == 0 or (int(labels.min()) >= 0 and int(labels.max()) < len(names))
        if labels.shape != (n,) or not in_range:
            raise RuntimeError(
                f"{type(self).__name__} gave labels {tuple(labels.shape)} for {n} images and "
                f"{len(names)} classes"
            )
        labels = labels.to(torch.int64)
        counts = torch.bincount(labels, minlength=len(names)).tolist()
        log.info("%d classes: %s", len(names),
                 ", ".join(f"{name} ({count})" for name, count in zip(names, counts)))  # fmt: skip
        return labels

    def _hold_out(self, images: torch.Tensor) -> torch.Tensor:
        """The training images; the last `holdout` of the dataset's fixed order go to
        `holdout_images`. The rest keep that order, so the metrics' real set (its first images)
        is the one a run without holdout uses."""
        total, held = len(images), holdout_count(self.holdout, len(images))
        if held >= total:
            raise UserError(
                f"data.holdout={self.holdout} holds out {held} of {total} images, leaving none "
                "to train on: lower data.holdout"
            )
        try:
            check_images_per_rank(total - held, self.world_size, self.batch_size)
        except UserError as err:
            if not held:
                raise
            raise UserError(
                f"data.holdout={self.holdout} holds out {held} of {total} images: {err} "
                "(or lower data.holdout)"
            ) from None
        if not held:
            return images
        order = fixed_order(total)
        self.holdout_images = images[order[total - held :]]
        if rank_zero_only.rank == 0:
            log.info(
                "Held out %d of %d images (data.holdout=%s), never trained on: training on %d",
                held,
                total,
                self.holdout,
                total - held,
            )
        return images[order[: total - held]]

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        """Batches indexed on the device when the set is held there, else the pinned loader."""
        trainer = self.trainer
        shuffle = not getattr(trainer, "overfit_batches", 0)  # as Lightning does for loaders
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if self.device_images is None or self.device_images.device != device:
            nbytes = self.images.nbytes
            if not holds_on_device(self.on_device, device, nbytes, self.device_memory_fraction):
                return self._loader(self.images, shuffle=shuffle, drop_last=True)
            self.device_images = self.images.to(device)
            self.device_labels = self.labels.to(device) if self.labels is not None else None
        kwargs = getattr(trainer, "distributed_sampler_kwargs", None)
        sampler = training_sampler(len(self.images), shuffle, kwargs)
        return DeviceBatches(
            self.device_images, sampler, self.batch_size, drop_last=True, labels=self.device_labels
        )

    @property
    def world_size(self) -> int:
        """The number of ranks the images are split across (1 before a trainer is attached)."""
        return getattr(self.trainer, "world_size", 1) if self.trainer is not None else 1

    _num_val_images: int = 0

    @property
    def num_val_images(self) -> int:
        """Real images `val_dataloader` yields: set by the quality-metrics callback (0: none)."""
        return self._num_val_images

    @num_val_images.setter
    def num_val_images(self, n: int) -> None:
        world = self.world_size
        if 0 < n < world:  # UnrepeatedDistributedSampler would leave some ranks with none
            raise UserError(
                f"{n} validation images across {world} ranks: some ranks would get none. Set "
                f"metrics.num_samples>={world} (the dataset permitting), or use fewer devices"
            )
        self._num_val_images = n

    def val_dataloader(self) -> DataLoader | list:
        """A fixed random subset of `num_val_images` training images, each seen by one rank only.

        The quality metrics compare generated images with these: the same subset in every run (its
        features can be cached), split across ranks without the padding DistributedSampler adds.
        With a holdout the training images are in the fixed order already (`_hold_out`).
        """
        if not self.num_val_images:
            return []
        subset = self._val_subset()
        labels = self.labels[subset] if self.labels is not None else None
        dataset = UInt8Images(self.images[subset], labels)
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            kwargs = self.trainer.distributed_sampler_kwargs
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False, **kwargs)
        # A private generator: each iterator draws its base seed from it, not from the training's
        # global stream (an evaluation would otherwise shift every later flip and augmentation).
        return DataLoader(
            dataset, self.batch_size, sampler=sampler, collate_fn=stack_batch,
            generator=torch.Generator(),
        )  # fmt: skip

    def _val_subset(self) -> torch.Tensor:
        """Indices of the validation images, in the order the metrics see (and cache) them."""
        held_out = self.holdout_images is not None
        order = torch.arange(len(self.images)) if held_out else fixed_order(len(self.images))
        return order[: self.num_val_images]

    def val_labels(self) -> torch.Tensor | None:
        """The validation images' classes, in `val_dataloader`'s dataset order (None: none)."""
        return self.labels[self._val_subset()] if self.labels is not None else None

    def _loader(self, images: torch.Tensor, shuffle: bool, drop_last: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            UInt8Images(images, self.labels),
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            collate_fn=stack_batch,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Any:
        """uint8 images to [-1, 1] (and flipped); labels, when the batch has them, pass as they
        are."""
        if isinstance(batch, (tuple, list)):
            return self._images_on_device(batch[0]), batch[1]
        return self._images_on_device(batch)

    def _images_on_device(self, batch: torch.Tensor) -> torch.Tensor:
        images = to_signed(batch)
        if self.flip and self.trainer is not None and self.trainer.training:
            flip = torch.rand(images.size(0), device=images.device) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        return images
