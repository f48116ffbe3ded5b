"""Progress as log lines, for a run whose stdout is a file or a pipe (nohup, SLURM, CI).

A bar there writes nothing readable, so this prints (through `logging`: the console and the run's
train.log) one line per epoch, one within an epoch after `every_n_minutes` without a line, one per
evaluation and a summary at the end of the run. It adds no host sync per step: an epoch line reads
the epoch means the module logs at the epoch's end; a line within an epoch waits for a batch that
Lightning logs, whose values `TrainLogs.log_step` has already copied to the host; the images counted
come from the batch's shape, never its data.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.progress import ProgressBar

from dcgan_lightning.models.train_logs import TrainLogs

log = logging.getLogger(__name__)

# Shown names of the GAN's values (train/<name>_epoch, train/<name>_step), in this order.
SHOWN = {
    "loss_d": "loss_d",
    "loss_g": "loss_g",
    "d_real": "D(x)",
    "d_fake": "D(G(z))",
    "ada_p": "ada_p",
    "r_t": "r_t",
}


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    return str(datetime.timedelta(seconds=round(seconds)))


def number(value: float) -> str:
    """Four significant digits, whatever the scale (a loss, a probability, FID or KID)."""
    return f"{value:.4g}"


def batch_images(batch: Any) -> int:
    """Images in a batch: the first dimension of its first tensor (a shape, not a device read)."""
    while isinstance(batch, (list, tuple, dict)) and batch:
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return batch.shape[0] if isinstance(batch, torch.Tensor) and batch.dim() else 0


class TextProgress(ProgressBar):
    """Epoch, evaluation and end-of-run lines in the log, on rank 0.

    Args:
        every_n_minutes: within an epoch, a line at the first logged batch this long after the
            last line (null: epoch lines only).
        run_dir: the run directory, listed in the end-of-run summary.
    """

    def __init__(self, every_n_minutes: float | None = 5.0, run_dir: str | None = None) -> None:
        super().__init__()
        self.every_n_seconds = None if every_n_minutes is None else 60.0 * every_n_minutes
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._enabled = True
        self._pending_eval: str | None = None  # an end-of-epoch evaluation, shown after the epoch
        self._last_eval: dict[str, float] = {}
        self._evals: list[tuple[int, dict[str, float]]] = []  # (epoch, metrics), this session

    # -- ProgressBar ----------------------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    # -- clocks and counts ----------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last_line = time.monotonic()
        self._batches = 0  # this session (a resumed run starts counting again)
        self._images = 0
        self._train_seconds = 0.0  # in training batches: epochs without their evaluations

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._batch_end = time.monotonic()
        self._epoch_images = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self._batch_end = time.monotonic()  # images/s: training time, not the epoch's evaluation
        n = batch_images(batch) * trainer.world_size
        self._batches += 1
        self._images += n
        self._epoch_images += n
        if not self._enabled or self.every_n_seconds is None:
            return
        last = i + 1 >= trainer.num_training_batches
        if last or self._batch_end - self._last_line < self.every_n_seconds:
            return
        if TrainLogs.logging_now(trainer):  # the step's values are on the host already
            step = trainer.progress_bar_metrics
            values = {k: step[f"train/{k}_step"] for k in SHOWN if f"train/{k}_step" in step}
            self._line(trainer, i + 1, "last", values)

    # -- lines ----------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics  # on every rank: see `on_validation_end`
        self._train_seconds += self._batch_end - self._epoch_start
        if not self._enabled:
            return
        means = {
            k: float(metrics[f"train/{k}_epoch"]) for k in SHOWN if f"train/{k}_epoch" in metrics
        }
        self._line(trainer, trainer.num_training_batches, "mean", means)
        self._flush_eval()

    def _line(self, trainer: pl.Trainer, batch: int, kind: str, values: dict[str, float]) -> None:
        """`epoch E/LAST batch B/N | KIND values | images/s | elapsed, ETA`: KIND is `mean` (the
        epoch's means, at its end) or `last` (the last logged step's values, within it)."""
        now = time.monotonic()
        self._last_line = now
        epoch, batches = trainer.current_epoch, trainer.num_training_batches
        shown = " ".join([kind, *(f"{SHOWN[k]} {number(v)}" for k, v in values.items())])
        speed = self._epoch_images / max(self._batch_end - self._epoch_start, 1e-9)
        elapsed = now - self._start
        log.info(
            "epoch %d/%s batch %d/%s | %s | %.0f img/s | elapsed %s, ETA %s",
            epoch,
            trainer.max_epochs - 1 if trainer.max_epochs not in (None, -1) else "?",
            batch,
            batches,
            shown if values else "no values logged yet",
            speed,
            clock(elapsed),
            self._eta(trainer, epoch * batches + batch, elapsed),
        )

    def _eta(self, trainer: pl.Trainer, done: float, elapsed: float) -> str:
        """Time left at this session's pace (evaluations included), when max_epochs bounds it."""
        batches = trainer.num_training_batches
        if trainer.max_epochs in (None, -1) or math.isinf(batches) or self._batches == 0:
            return "?"
        left = max(trainer.max_epochs * batches - done, 0)
        return clock(left * elapsed / self._batches)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # On every rank (this bar is disabled on the others): reading `callback_metrics` may run
        # Lightning's deferred reduction of `sync_dist=True` values, a collective.
        values = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and v.numel() == 1
        }
        self._last_eval = values
        self._evals.append((trainer.current_epoch, values))
        if not self._enabled:
            return
        shown = " ".join(f"{k} {number(v)}" for k, v in sorted(values.items()))
        self._pending_eval = (
            f"evaluation at epoch {trainer.current_epoch} | {shown or 'no metrics'} | "
            f"{time.monotonic() - self._eval_start:.1f} s"
        )
        if not trainer.fit_loop.epoch_loop._is_training_done:
            self._flush_eval()  # mid-epoch (val_check_interval < 1): shown now

    def _flush_eval(self) -> None:
        if self._pending_eval is not None:
            log.info("%s", self._pending_eval)
            self._pending_eval = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics  # on every rank: see `on_validation_end`
        if not self._enabled or not hasattr(self, "_start"):
            return
        self._flush_eval()
        elapsed = time.monotonic() - self._start
        last = "?" if trainer.max_epochs in (None, -1) else trainer.max_epochs - 1
        lines = [
            f"Run summary: epoch {trainer.current_epoch - 1}/{last} done, {self._batches} batches "
            f"in {clock(elapsed)} this session, {self._images / max(self._train_seconds, 1e-9):.0f}"
            " img/s while training"
        ]
        best = self._best(trainer)
        if best:
            lines.append(f"  best: {best}")
        final = {
            SHOWN[k]: float(metrics[f"train/{k}_epoch"])
            for k in SHOWN
            if f"train/{k}_epoch" in metrics
        }
        final |= dict(sorted(self._last_eval.items()))
        if final:
            lines.append("  final: " + " ".join(f"{k} {number(v)}" for k, v in final.items()))
        if self.run_dir is not None and self.run_dir.is_dir():
            files = sorted(p.name + ("/" if p.is_dir() else "") for p in self.run_dir.iterdir())
            lines.append(f"  files: {self.run_dir.resolve()}: {' '.join(files)}")
        log.info("%s", "\n".join(lines))

    def _best(self, trainer: pl.Trainer) -> str | None:
        """The best evaluation by the best-checkpoint callback's metric: value, epoch, file."""
        kept = [
            c
            for c in trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint) and c.monitor and c.best_model_path
        ]
        if not kept:
            return None
        callback = kept[0]
        score = float(callback.best_model_score)
        epochs = [e for e, m in self._evals if m.get(callback.monitor) == score]
        where = Path(callback.best_model_path)
        if self.run_dir is not None and where.is_relative_to(self.run_dir):
            where = where.relative_to(self.run_dir)
        at = f" at epoch {epochs[-1]}" if epochs else ""
        return f"{callback.monitor} {number(score)}{at} ({where})"
