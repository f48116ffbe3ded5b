"""Config groups built with their mistakes reported as `UserError`s, and the model checked before
any data is read.

A constructor that refuses a setting raises ValueError or TypeError (Lightning: a
`MisconfigurationException`); Hydra's `instantiate` wraps it in an `InstantiationException`, a
traceback with exit status 1. `build` turns it into one message naming the config group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from omegaconf import DictConfig

from dcgan_lightning.errors import UserValueError, user_error
from dcgan_lightning.resume import check_compatible, read_checkpoint

SETTING_ERRORS = (ValueError, TypeError, MisconfigurationException)


def _hint(group: str, node: DictConfig) -> str:
    accelerator = str(node.get("accelerator", "")) if group == "trainer" else ""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return (
            "trainer=gpu needs a CUDA GPU and none is visible here: use trainer=cpu, or check "
            "the driver and CUDA_VISIBLE_DEVICES"
        )
    return f"Check the {group}.* settings (`--help` documents them, `--cfg job` shows them)"


def build(group: str, node: DictConfig, **kwargs: Any) -> Any:
    """`instantiate(node, **kwargs)`; a setting the constructor refuses is a `UserValueError`
    saying which group it is in. A `UserError` the constructor raised passes unchanged."""
    try:
        return _instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if user_error(err) is not None or not isinstance(cause, SETTING_ERRORS):
            raise
        message = str(cause).strip()
        raise UserValueError(f"{group}: {message}\n{_hint(group, node)}") from err


def _instantiate(node: DictConfig, **kwargs: Any) -> Any:
    from hydra.utils import instantiate

    return instantiate(node, **kwargs)


def check_model(
    model_cfg: DictConfig, datamodule: LightningDataModule, ckpt_path: str | None
) -> None:
    """Build the model on the meta device (no memory, no draw from the seeded RNGs) to check its
    settings and, resuming, its shapes against the checkpoint: before any data is downloaded or
    decoded. Labelled data's classes are known only once it is there: the checkpoint's count
    stands in for them (the real model is checked again once the data is read)."""
    ckpt = read_checkpoint(ckpt_path) if ckpt_path is not None else None
    num_classes = 0
    if getattr(datamodule, "with_labels", False):
        saved = (ckpt or {}).get("hyper_parameters", {}).get("num_classes") or 0
        num_classes = max(2, int(saved))
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build(
            "model",
            model_cfg,
            image_size=datamodule.image_size,
            channels=datamodule.channels,
            num_classes=num_classes,
        )
    if ckpt is not None:
        check_compatible(ckpt_path, model, ckpt)


def check_trainer(trainer_cfg: DictConfig, precision: Callable[[], dict[str, Any]]) -> None:
    """Build the Trainer once, quietly and without callbacks or loggers, to check its settings
    (`trainer=gpu` without a GPU, an unknown precision) before any data is read or anything is
    written; `precision()`: the extra arguments the real one gets. Callbacks are built later: the
    metrics callback may fetch Inception weights."""
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # its "GPU available" lines come with the real one
    try:
        build("trainer", trainer_cfg, callbacks=[], logger=False, **precision())
    finally:
        lightning_log.setLevel(level)
