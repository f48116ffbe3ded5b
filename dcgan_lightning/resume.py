"""Resuming a run: which checkpoint `ckpt_path` names, which run directory continues, and whether
the checkpoint fits the model this config builds.

A resumed run writes into the run directory of its checkpoint, so checkpoints, sample grids, logs
and the W&B run id stay together. Hydra picks the run directory before `train()` runs, so the
choice is made by the `dcgan_run_dir` resolver that `hydra.run.dir` calls (conf/hydra/default.yaml):
it sees the composed `ckpt_path` and `task_name`, whatever experiment or override set them. An
explicit `hydra.run.dir=...` on the command line still wins.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# Hyperparameters that decide the networks' shapes; image_size and channels come from the data.
ARCHITECTURE_KEYS = ("image_size", "channels", "z_dim", "generator", "discriminator", "ema")


def find_last(task_dir: Path) -> Path | None:
    """The most recently written `last.ckpt` of the runs and multirun jobs under `task_dir` (the
    layout of conf/hydra/default.yaml; fixed depths, so a stray directory is never walked)."""
    patterns = ("runs/*/checkpoints/last.ckpt", "multiruns/*/*/checkpoints/last.ckpt")
    candidates = [path for pattern in patterns for path in task_dir.glob(pattern)]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """A path as given; for "last", this run directory's `last.ckpt` (a resumed run writes into the
    run directory of its checkpoint), else the newest one of the task (`output_dir/../..`)."""
    if ckpt_path != "last":
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
        return ckpt_path
    own = output_dir / "checkpoints" / "last.ckpt"
    found = own if own.is_file() else find_last(output_dir.parent.parent)
    if found is None:
        raise FileNotFoundError(
            f"ckpt_path=last: no checkpoints/last.ckpt under {output_dir.parent.parent}; "
            "nothing to resume (check task_name, or give the checkpoint's path)"
        )
    return str(found)


def run_dir(ckpt_path: str | None, fresh_dir: str) -> str:
    """`hydra.run.dir`: the run directory of the checkpoint to resume, else `fresh_dir`.

    `fresh_dir` is `outputs/<task_name>/runs/<time>`; "last" searches `outputs/<task_name>`. A
    checkpoint outside a `<run>/checkpoints/` folder, or none found, starts a fresh directory (a
    missing checkpoint is then reported by `train()`, with its own message)."""
    if ckpt_path is None:
        return fresh_dir
    ckpt = find_last(Path(fresh_dir).parent.parent) if ckpt_path == "last" else Path(ckpt_path)
    if ckpt is None or not ckpt.is_file() or ckpt.parent.name != "checkpoints":
        return fresh_dir
    return str(ckpt.parent.parent)


OmegaConf.register_new_resolver("dcgan_run_dir", run_dir, replace=True)


def _flat(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flat(f"{prefix}.{key}", inner)
    else:
        yield prefix, value


def _setting_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    old = dict(kv for key in ARCHITECTURE_KEYS if key in saved for kv in _flat(key, saved[key]))
    new = dict(kv for key in ARCHITECTURE_KEYS if key in current for kv in _flat(key, current[key]))
    return [
        f"{key}: {old.get(key, 'unset')} in the checkpoint, {new.get(key, 'unset')} here"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, "unset") != new.get(key, "unset")
    ]


def _tensor_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    problems = [f"{k}: missing from the checkpoint" for k in current if k not in saved]
    problems += [f"{k}: in the checkpoint, not in this model" for k in saved if k not in current]
    problems += [
        f"{k}: shape {tuple(saved[k].shape)} in the checkpoint, {tuple(current[k].shape)} here"
        for k in current
        if k in saved and saved[k].shape != current[k].shape
    ]
    return problems


def check_compatible(ckpt_path: str, model: LightningModule) -> None:
    """Fail with a readable list of differences, before any training and before anything in the
    run directory is touched, when `ckpt_path` cannot be loaded into `model`. Different settings
    that keep the shapes (say, another activation) only warn: they may be intended."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ValueError(
            f"Cannot read checkpoint {ckpt_path} ({type(err).__name__}: {err}). It is truncated or "
            "not a checkpoint of this project; pick another from its checkpoints/ folder"
        ) from err
    settings = _setting_differences(ckpt.get("hyper_parameters", {}), dict(model.hparams))
    tensors = _tensor_differences(ckpt.get("state_dict", {}), model.state_dict())
    if tensors:
        lines = "\n  ".join(settings + tensors[:8] + ["..."] * (len(tensors) > 8))
        raise ValueError(
            f"Checkpoint {ckpt_path} does not fit the model of this run:\n  {lines}\n"
            "Resume with the data and model settings of the run that wrote it (its config.yaml "
            "is in the run directory; image_size and channels come from the data config)."
        )
    if settings:
        log.warning("Resuming with settings unlike the checkpoint's: %s", "; ".join(settings))
