"""`val/r_v` at every evaluation: is D memorising its training images? (Karras et al. 2020)

Active when the datamodule holds images out (`data.holdout`). At each evaluation D scores the
held-out images, as many fixed training images, and as many images of the sampling generator
(the EMA copy when there is one, as for the other metrics) from fixed noise;
`metrics.overfitting` turns the three mean logits into r_v. A conditional model's D scores each
image with its class; its generated images take the held-out images' classes, so the three sets
have the same class mix.

Under DDP every rank computes the whole value itself, from the same images, noise and weights:
the same number on every rank, whatever the world size, with no collective of its own, so no rank
can wait on another here (the SyncBatchNorm collectives of `trainer.sync_batchnorm` match too,
every rank running the same forwards). The only collective is the log's `sync_dist`, reached by
every rank, as for the quality metrics.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from dcgan_lightning.data.base import to_signed
from dcgan_lightning.metrics.overfitting import discriminator_overfitting
from dcgan_lightning.rng import keyed_generator

TRAIN_SUBSET_SEED = 1  # which training images stand against the held-out ones: fixed, as those are
NOISE_KEY = 2  # keys the private generator of the fixed noise


class OverfittingRatio(Callback):
    """Logs `val/r_v` (0: D scores unseen real images like its training images; 1: as low as
    generated ones) at each evaluation, on as many training as held-out images."""

    def __init__(self) -> None:
        self.train: torch.Tensor | None = None  # uint8, on the CPU, fixed at setup
        self.heldout: torch.Tensor | None = None
        self.labels: tuple[torch.Tensor, torch.Tensor] | None = None  # (train, held-out) classes
        self.batch_size = 0
        self.last: dict[str, float] = {}  # this rank's values at the last evaluation

    @property
    def active(self) -> bool:
        return self.heldout is not None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        heldout = getattr(datamodule, "holdout_images", None)
        if heldout is None or not len(heldout):
            self.train = self.heldout = None
            return
        images = datamodule.images
        pick = torch.Generator().manual_seed(TRAIN_SUBSET_SEED)
        subset = torch.randperm(len(images), generator=pick)[: len(heldout)].sort().values
        self.train, self.heldout, self.batch_size = images[subset], heldout, datamodule.batch_size
        self.labels = None
        if getattr(pl_module, "labels", None) is not None:  # a conditional D needs the classes
            self.labels = (datamodule.labels[subset], datamodule.holdout_labels)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active and not getattr(trainer.datamodule, "num_val_images", 0):
            rank_zero_warn(
                f"data.holdout holds {len(self.heldout)} images out, but no evaluation runs "
                "(no quality metrics: metrics=none?): val/r_v is never logged"
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active or trainer.sanity_checking:
            return
        self.last = self.compute(pl_module)
        pl_module.log("val/r_v", self.last["r_v"], sync_dist=True)  # equal on every rank already

    def compute(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """r_v and its mean logits; the model and every global random stream stay as they were."""
        device, n, size = pl_module.device, len(self.heldout), self.batch_size
        z = pl_module.sample_noise(n, keyed_generator(device, NOISE_KEY))
        if self.labels is None:
            generated = torch.cat([pl_module.generate(batch) for batch in z.split(size)])
        else:
            y = self.labels[1].split(size)
            generated = torch.cat([pl_module.generate(b, c) for b, c in zip(z.split(size), y)])
        train, heldout = (to_signed(x.to(device)) for x in (self.train, self.heldout))
        labels = None if self.labels is None else (*self.labels, self.labels[1])
        return discriminator_overfitting(pl_module, train, heldout, generated, size, labels=labels)
