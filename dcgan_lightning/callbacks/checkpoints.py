"""The run's checkpoints: `last.ckpt` at the end of every epoch and every N minutes of training,
`epoch_NNNN.ckpt` every `every_n_epochs` epochs, the newest `keep` of them kept.

Lightning's `ModelCheckpoint(save_last=True)` writes `last.ckpt` only in a call that also wrote a
periodic checkpoint, and its `train_time_interval` does nothing under manual optimization: with
`every_n_epochs: 5` a killed run lost up to five epochs. Here `last.ckpt` has its own schedule.

Every save happens on every rank at the same point (the LightningModule's `on_save_checkpoint`
may be collective): epoch ends are the same everywhere, and whether the clock says "save" is
decided by rank 0 and broadcast.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

# Under DDP rank 0's verdict is a broadcast (a collective and a host sync): ask the clock on every
# 16th batch only, which a 30-minute interval does not notice. One process asks every batch.
DDP_CLOCK_EVERY_N_BATCHES = 16


class RunCheckpoints(ModelCheckpoint):
    """`dirpath/last.ckpt` every epoch and every `last_every_n_minutes` (null: epochs only);
    `dirpath/epoch_NNNN.ckpt` every `every_n_epochs`, keeping the newest `keep` (-1: all)."""

    def __init__(
        self,
        dirpath: str,
        every_n_epochs: int = 5,
        keep: int = 5,
        last_every_n_minutes: float | None = 30,
    ) -> None:
        if last_every_n_minutes is not None and last_every_n_minutes < 0:
            raise ValueError(
                f"last_every_n_minutes must be >= 0 or null, got {last_every_n_minutes}"
            )
        super().__init__(
            dirpath=dirpath,
            filename="epoch_{epoch:04d}",
            auto_insert_metric_name=False,
            save_last=True,
            # "newest first" is "highest global step first": top-k by step keeps the newest `keep`
            monitor="step",
            mode="max",
            save_top_k=keep,
            every_n_epochs=every_n_epochs,
            save_on_train_epoch_end=True,  # after validation (Lightning 2), so never twice
            enable_version_counter=False,  # overwrite, never last-v1.ckpt
        )
        self.last_every_s = None if last_every_n_minutes is None else 60.0 * last_every_n_minutes
        self._last_saved_at = time.monotonic()

    def _saving_allowed(self, trainer: pl.Trainer) -> bool:
        return (
            not trainer.fast_dev_run
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_saved_at = time.monotonic()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        if self.last_every_s is None or not self._saving_allowed(trainer):
            return
        if trainer.world_size > 1 and (batch_idx + 1) % DDP_CLOCK_EVERY_N_BATCHES:
            return
        due = time.monotonic() - self._last_saved_at >= self.last_every_s
        if trainer.strategy.broadcast(due):  # rank 0's clock decides for all ranks
            self._save_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._saving_allowed(trainer):
            return
        every = self._every_n_epochs
        if every >= 1 and (trainer.current_epoch + 1) % every == 0:
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
        self._save_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: saves happen at the end of the training epoch, which follows validation."""

    def _save_last(self, trainer: pl.Trainer) -> None:
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_saved_at = time.monotonic()
