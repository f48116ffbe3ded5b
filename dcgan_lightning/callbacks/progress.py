"""The console's progress: a Rich bar on a terminal, log lines when stdout is a file or pipe.

`console_progress` picks one (callbacks/text_progress.py has the lines). The Rich bar reads the
trainer every `every_n_batches` batches, not every batch.

Lightning's `RichProgressBar` updates its task, reads `trainer.progress_bar_metrics` and refreshes
after every training batch, whatever its `refresh_rate` (which only sets how often Rich's own
thread redraws per second). Reading the metrics converts them to Python numbers: on a GPU that
waits for the step to finish, once per batch. This bar does it once per log interval (when the
shown losses change anyway) and on the epoch's last batch. Rich redraws from its own thread,
`refresh_rate` times a second at most, and only after an update: with Lightning's default (100)
it redraws at every update, ~3 ms of Python holding the GIL each, 50 times a second on a GPU
that steps in 2 ms; the config sets 2.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar
from rich.console import Console

from dcgan_lightning.callbacks.text_progress import TextProgress


class GANProgressBar(RichProgressBar):
    """`RichProgressBar` updated every `every_n_batches` training batches (and at the last)."""

    def __init__(self, every_n_batches: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, got {every_n_batches}")
        self.every_n_batches = every_n_batches

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        last = i + 1 >= trainer.num_training_batches
        if (i + 1) % self.every_n_batches == 0 or last:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, i)


def console_progress(
    mode: str = "auto",
    every_n_batches: int = 10,
    refresh_rate: int = 2,
    every_n_minutes: float | None = 5.0,
    run_dir: str | None = None,
) -> ProgressBar:
    """`mode=bar`: `GANProgressBar`; `lines`: `TextProgress`; `auto`: the bar where Rich can draw
    it live (a terminal or Jupyter, as Rich decides: TTY_COMPATIBLE=1 or FORCE_COLOR force it),
    else the lines (nohup, SLURM, CI), where a bar leaves nothing readable."""
    if mode not in ("auto", "bar", "lines"):
        raise ValueError(f"callbacks.progress_bar.mode must be auto, bar or lines, got {mode!r}")
    if mode == "auto":
        console = Console()
        mode = "bar" if console.is_terminal or console.is_jupyter else "lines"
    if mode == "bar":
        return GANProgressBar(every_n_batches=every_n_batches, refresh_rate=refresh_rate)
    return TextProgress(every_n_minutes=every_n_minutes, run_dir=run_dir)
