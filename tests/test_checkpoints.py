"""The checkpoint schedule of the default callbacks config: last.ckpt every epoch and every N
minutes, epoch_NNNN.ckpt every N epochs, the newest `keep` kept; a SIGKILL loses <= an epoch."""

from __future__ import annotations

import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import DictConfig, open_dict

from dcgan_lightning.train import train
from tests.conftest import compose_config, tiny
from tests.test_reliability import CLI, EXACT, load, start, wait_for


def default_cfg(out: Path, *overrides: str, epochs: int, batches: int = 2) -> DictConfig:
    """The real config with the default checkpoint callbacks, as shipped (no every_n_epochs=1)."""
    cfg = tiny(compose_config([*EXACT, *overrides], out))
    with open_dict(cfg):
        cfg.trainer.max_epochs = epochs
        cfg.trainer.limit_train_batches = batches
        cfg.callbacks = {
            k: cfg.callbacks[k] for k in ("model_checkpoint", "save_on_interrupt", "sample_grid")
        }
    return cfg


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


SEEN: list = []  # what the watchers below read from last.ckpt, in order


class LastAtEpochStart(pl.Callback):
    """Records last.ckpt's epoch as each epoch starts: the end of the one before."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        SEEN.append(load(self.path)["epoch"] if self.path.exists() else None)


class LastAtBatchStart(LastAtEpochStart):
    """Records last.ckpt's global step before each batch; keeps a copy of the one at `copy_at`."""

    def __init__(self, path: str, copy_at: int, copy_to: str) -> None:
        super().__init__(path)
        self.copy_at, self.copy_to = copy_at, copy_to

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        SEEN.append(load(self.path)["global_step"] if self.path.exists() else None)
        if len(SEEN) - 1 == self.copy_at:
            torch.save(load(self.path), self.copy_to)


def watch(cfg: DictConfig, cls: type, **kwargs: object) -> DictConfig:
    SEEN.clear()
    with open_dict(cfg):
        cfg.callbacks.watch = {
            "_target_": f"tests.test_checkpoints.{cls.__name__}",
            "path": f"{cfg.paths.output_dir}/checkpoints/last.ckpt",
            **kwargs,
        }
    return cfg


def test_last_ckpt_every_epoch_periodic_every_n_epochs_newest_keep_kept(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = default_cfg(
        out,
        "callbacks.model_checkpoint.every_n_epochs=2",
        "callbacks.model_checkpoint.keep=2",
        epochs=7,
    )
    train(watch(cfg, LastAtEpochStart))
    assert SEEN == [None, 0, 1, 2, 3, 4, 5]
    assert names(out / "checkpoints") == ["epoch_0003.ckpt", "epoch_0005.ckpt", "last.ckpt"]
    assert load(out / "checkpoints" / "epoch_0005.ckpt")["epoch"] == 5
    assert load(out / "checkpoints" / "last.ckpt")["epoch"] == 6


def test_time_based_last_ckpt_is_written_mid_epoch_and_resumes_there(tmp_path: Path) -> None:
    out = tmp_path / "run"
    minutes = "callbacks.model_checkpoint.last_every_n_minutes=0"  # due after every batch
    cfg = default_cfg(out, minutes, epochs=2, batches=3)
    train(watch(cfg, LastAtBatchStart, copy_at=2, copy_to=str(tmp_path / "mid_epoch.ckpt")))
    assert SEEN == [None, 2, 4, 6, 8, 10]  # rewritten after every batch, epoch ends included
    mid = load(tmp_path / "mid_epoch.ckpt")
    assert mid["epoch"] == 0 and mid["global_step"] == 4  # 2 of epoch 0's 3 batches

    # Resumed from the mid-epoch save, the run trains the rest: 1 batch of epoch 0, then epoch 1.
    resumed = tmp_path / "resumed"
    cfg = default_cfg(resumed, "callbacks.model_checkpoint.last_every_n_minutes=null", epochs=2,
                      batches=3)  # fmt: skip
    with open_dict(cfg):
        cfg.ckpt_path = str(tmp_path / "mid_epoch.ckpt")
    train(cfg)
    done = load(resumed / "checkpoints" / "last.ckpt")
    assert (done["epoch"], done["global_step"]) == (1, 12)


def test_no_time_based_save_within_the_interval(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(default_cfg(out, epochs=1, batches=3))  # 30 min: only the epoch end writes last.ckpt
    assert names(out / "checkpoints") == ["last.ckpt"]
    assert load(out / "checkpoints" / "last.ckpt")["global_step"] == 6


@pytest.mark.slow
def test_cli_sigkill_after_epoch_3_of_9_leaves_a_recent_last_ckpt(tmp_path: Path) -> None:
    """The shipped config (every_n_epochs 5, metrics every 5 epochs): a kill loses <= an epoch."""
    runs = tmp_path / "outputs" / "shapes" / "runs"
    forced = (
        "metrics=none",
        "callbacks.model_checkpoint.every_n_epochs=1",
        "~callbacks.sample_grid",
    )
    cli = [o for o in CLI if o not in forced] + ["metrics.download=false", "metrics.num_samples=32"]
    proc = start(tmp_path, "trainer.max_epochs=9", cli=cli)
    wait_for(lambda: list(runs.glob("*/samples/epoch_0003.png")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    (run,) = runs.iterdir()
    assert load(run / "checkpoints" / "last.ckpt")["epoch"] >= 2
