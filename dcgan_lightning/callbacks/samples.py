"""Fixed-noise sample grids: one PNG per epoch, and a progress GIF of them at the end of fit, sent
to the loggers at the step (batch index) that the metrics of that epoch are logged at."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image
from torchvision.utils import make_grid, save_image


def batch_step(trainer: pl.Trainer) -> int:
    """The step of the last batch trained, the x-axis of every metric Lightning logs: per-step
    metrics at their batch index, epoch means and `val/*` at the epoch's last one (Lightning's
    `global_step` counts optimizer steps instead, 2 per batch)."""
    return max(0, trainer.fit_loop.epoch_loop._batches_that_stepped - 1)


def log_image(trainer: pl.Trainer, key: str, path: Path) -> None:
    """Send an image file to every logger that shows images, at the metrics' step."""
    step = batch_step(trainer)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, [str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            import numpy as np

            image = np.asarray(Image.open(path).convert("RGB"))
            logger.experiment.add_image(key, image, step, dataformats="HWC")


def log_animation(trainer: pl.Trainer, key: str, path: Path) -> None:
    """Send a GIF to W&B as a video (an animation in its media panel); other loggers show the
    frames already, as images."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            video = wandb.Video(str(path), format="gif")
            logger.experiment.log({key: video, "trainer/global_step": batch_step(trainer)})


class SampleGrid(Callback):
    """Draws G(fixed_noise) every epoch into `dirpath/epoch_XXXX.png`; `progress.gif` at the end.
    A conditional model's grid has a row per class."""

    def __init__(self, dirpath: str, nrow: int = 8, gif_frame_ms: int = 200) -> None:
        self.dirpath = Path(dirpath)
        self.nrow, self.gif_frame_ms = nrow, gif_frame_ms

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        images, nrow = pl_module.fixed_samples()  # every rank: no collective skipped
        if not trainer.is_global_zero:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"epoch_{trainer.current_epoch:04d}.png"
        grid = make_grid(images, nrow=nrow or self.nrow, normalize=True, value_range=(-1, 1))
        save_image(grid, path)
        log_image(trainer, "samples", path)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        frames = sorted(self.dirpath.glob("epoch_*.png"))
        if not trainer.is_global_zero or not frames:
            return
        images = [Image.open(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
        path = self.dirpath / "progress.gif"
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=self.gif_frame_ms, loop=0
        )
        log_animation(trainer, "samples/progress", path)
