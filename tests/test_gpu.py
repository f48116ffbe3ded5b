"""GPU-only behaviour (skipped without CUDA; `make gpu-check` runs these on a GPU)."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict

from dcgan_lightning.train import train
from tests.conftest import requires_cuda

WARMUP, WINDOW = 3, 10  # cudnn autotuning and lazy allocations happen in the warm-up batches


class SyncErrors(Callback):
    """`torch.cuda.set_sync_debug_mode("error")` from the start of batch WARMUP to the start of
    batch WARMUP + WINDOW: those WINDOW batches, all their hooks included, must never wait for the
    device. Counts the batches it watched, so a short run cannot pass by watching none; `latest`
    is the instance the config built."""

    latest: SyncErrors | None = None

    def __init__(self) -> None:
        self.watched = 0
        SyncErrors.latest = self

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        if batch_idx == WARMUP:
            torch.cuda.set_sync_debug_mode("error")
        elif batch_idx == WARMUP + WINDOW:
            torch.cuda.set_sync_debug_mode(0)
        if WARMUP <= batch_idx < WARMUP + WINDOW:
            self.watched += 1


def default_gpu_config(make_cfg: Callable[..., DictConfig], model: str) -> DictConfig:
    """The default config on one GPU (progress bar, W&B offline, default callbacks), 14 batches.

    Logging steps may sync by design (values go to the loggers every `log_every_n_steps`), so the
    interval is moved past the watched window; every other default stays.
    """
    cfg = make_cfg(
        f"model={model}",
        "trainer=gpu",
        f"+callbacks.sync_errors._target_={SyncErrors.__module__}.SyncErrors",
        shrink=False,
    )
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = WARMUP + WINDOW + 1
        cfg.trainer.log_every_n_steps = 50
        cfg.data.num_images = cfg.data.batch_size * (WARMUP + WINDOW + 1)
        cfg.metrics.download = False
    return cfg


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("model", ["dcgan", "dcgan_plus"])
def test_training_batches_never_sync_with_the_device(
    make_cfg: Callable[..., DictConfig], model: str
) -> None:
    cfg = default_gpu_config(make_cfg, model)
    try:
        train(cfg)  # a synchronising call in the window raises RuntimeError here
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert SyncErrors.latest is not None and SyncErrors.latest.watched == WINDOW
