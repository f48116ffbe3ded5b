"""`train(cfg)`: build datamodule, GAN, callbacks, loggers and Trainer from a Hydra config; fit.

Mistakes are found cheapest first, before anything is written for the run: the checkpoint to
resume, then the data, model and trainer settings (the model built on the meta device, its shapes
checked against the checkpoint), and only then is data downloaded and decoded. A run directory,
config.yaml and a W&B run exist only for a run that starts.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from dcgan_lightning.callbacks.dispatch import skip_unused_batch_hooks
from dcgan_lightning.checkpoint_io import AtomicCheckpointIO, ensure_writable
from dcgan_lightning.loggers import finish_wandb, start_loggers
from dcgan_lightning.precision import trainer_precision
from dcgan_lightning.quiet import silence_library_noise
from dcgan_lightning.resume import check_compatible, resolve_ckpt_path
from dcgan_lightning.sweep import rerun_this_job_for_ddp_ranks, write_result
from dcgan_lightning.validation import build, check_model, check_trainer

log = logging.getLogger(__name__)


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` node of a dict config group (callbacks, loggers)."""
    if not cfg:
        return []
    return [
        instantiate(node)
        for node in cfg.values()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def config_file(output_dir: Path) -> Path:
    """`config.yaml` for a new run; a resumed one keeps it and adds `config_resume_<n>.yaml`."""
    path, n = output_dir / "config.yaml", 0
    while path.exists():
        n += 1
        path = output_dir / f"config_resume_{n}.yaml"
    return path


def check_data(datamodule: pl.LightningDataModule) -> None:
    """Fetch and load the data before anything is written for the run: missing data or too few
    images is reported before a run directory, config.yaml or W&B run exists for a run that never
    starts. Rank 0 only (other ranks start inside `fit`). `setup` runs on a copy: inside `fit` it
    runs again, on every rank, knowing the world size (a cache hit for decoded image sets)."""
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()
        copy.copy(datamodule).setup("fit")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit a GAN as `cfg` describes and return the final logged metrics."""
    silence_library_noise()
    output_dir = Path(cfg.paths.output_dir)
    ensure_writable(output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    # The datamodule fixes image size, channels and classes; the model is built to match.
    datamodule: pl.LightningDataModule = build("data", cfg.data)
    check_model(cfg.model, datamodule, ckpt_path)  # on the meta device: no data read yet
    rerun_this_job_for_ddp_ranks()  # before a Trainer reads the launch environment
    check_trainer(cfg.trainer, lambda: trainer_precision(cfg.trainer))
    check_data(datamodule)
    model: pl.LightningModule = build(
        "model",
        cfg.model,
        image_size=datamodule.image_size,
        channels=datamodule.channels,
        num_classes=datamodule.num_classes,
    )
    if ckpt_path is not None:
        check_compatible(ckpt_path, model)  # the real classes, now that the data is read
    callbacks = instantiate_dict(cfg.get("callbacks"))

    resolved = OmegaConf.to_container(cfg, resolve=True)
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, config_file(output_dir), resolve=True)
    configured = instantiate_dict(cfg.get("logger"))
    loggers = start_loggers(configured, resolved, str(output_dir))
    try:
        precision = trainer_precision(cfg.trainer)  # 16-mixed on a CPU: real fp16
        trainer: pl.Trainer = build(
            "trainer", cfg.trainer, callbacks=callbacks, logger=loggers or False, **precision
        )
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        skip_unused_batch_hooks(trainer.callbacks)  # Lightning's own ones too
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        finish_wandb(configured)  # also a W&B run that failed to start

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        write_result(output_dir, metrics, "completed")
        log.info("Run finished. Outputs in %s", output_dir.resolve())
    return metrics
