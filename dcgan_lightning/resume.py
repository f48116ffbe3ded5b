"""Resuming a run: which checkpoint `ckpt_path` names, which run directory continues, and whether
the checkpoint fits the model this config builds.

A resumed run writes into the run directory of its checkpoint, so checkpoints, sample grids, logs
and the W&B run id stay together. Hydra picks the run directory before `train()` runs, so the
choice is made by the `dcgan_run_dir` resolver that `hydra.run.dir` calls (conf/hydra/default.yaml):
it sees the composed `ckpt_path` and `task_name`, whatever experiment or override set them. An
explicit `hydra.run.dir=...` on the command line still wins.

A mistake here (no such checkpoint, a directory, a corrupt file, one that does not fit the model)
is a `UserError`, reported before the run directory is written to. torch is imported only to read
a checkpoint: composing a config does not load it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from dcgan_lightning.errors import MissingFileError, UserValueError

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

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
        if ckpt_path is not None:
            check_checkpoint_file(ckpt_path)
        return ckpt_path
    own = output_dir / "checkpoints" / "last.ckpt"
    found = own if own.is_file() else find_last(output_dir.parent.parent)
    if found is None:
        raise MissingFileError(
            f"ckpt_path=last: no checkpoints/last.ckpt under {output_dir.parent.parent}; "
            "nothing to resume. Check task_name (runs are found under outputs/<task_name>/), or "
            "give the checkpoint's path: ckpt_path=outputs/<task>/runs/<time>/checkpoints/last.ckpt"
        )
    return str(found)


def check_checkpoint_file(ckpt_path: str | Path) -> None:
    """A `MissingFileError` naming the fix when `ckpt_path` is missing or a directory (a run
    directory: its checkpoints are listed)."""
    path = Path(ckpt_path)
    if path.is_dir():
        found = sorted(path.glob("*.ckpt")) or sorted(path.glob("checkpoints/*.ckpt"))
        names = ", ".join(str(p) for p in found[:4]) or "none"
        raise MissingFileError(
            f"ckpt_path={ckpt_path} is a directory; pass a checkpoint file, e.g. "
            f"ckpt_path={path / 'checkpoints' / 'last.ckpt'} (checkpoints found there: {names})"
        )
    if not path.is_file():
        raise MissingFileError(
            f"ckpt_path={ckpt_path}: no such file. Give a .ckpt written by training (a run's "
            "checkpoints/ folder), or ckpt_path=last for the newest run of this task_name"
        )


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


def hydra_subdir(output_dir: str, now: str) -> str:
    """`hydra.output_subdir`: `.hydra` for a new run. A resumed run (its directory already has
    checkpoints/) writes Hydra's files to `.hydra/resume_<now>/`: the first run's `.hydra/` (the
    overrides that built it, which a mismatch message offers) is never rewritten."""
    return f".hydra/resume_{now}" if (Path(output_dir) / "checkpoints").is_dir() else ".hydra"


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


def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict (tensors memory-mapped), or a `UserValueError` for a truncated or
    foreign file."""
    import torch  # here, not at import: composing a config must not load torch

    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserValueError(
            f"Cannot read checkpoint {ckpt_path} ({type(err).__name__}: {first_line}). It is "
            "truncated or not a checkpoint of this project; pick another from its checkpoints/ "
            "folder"
        ) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserValueError(
            f"{ckpt_path} is not a Lightning checkpoint (no state_dict): pass a .ckpt written "
            "by `python -m dcgan_lightning`"
        )
    return ckpt


def original_overrides(ckpt_path: str | Path) -> list[str] | None:
    """The command-line overrides of the run that wrote `ckpt_path` (its `.hydra/overrides.yaml`,
    which a resume never rewrites), or None when it has none."""
    path = Path(ckpt_path).resolve().parent.parent / ".hydra" / "overrides.yaml"
    try:
        overrides = OmegaConf.load(path)
    except (OSError, ValueError):
        return None
    return [str(o) for o in overrides if not str(o).startswith("ckpt_path=")]


def resume_command(ckpt_path: str | Path) -> str:
    """How to resume `ckpt_path` with its run's own settings: the command line with its run's
    overrides, or a pointer to its config.yaml when they are unknown."""
    overrides = original_overrides(ckpt_path)
    if overrides is None:
        config = Path(ckpt_path).resolve().parent.parent / "config.yaml"
        return f"Its run's settings are in {config}"
    command = " ".join(["python -m dcgan_lightning", *overrides, f"ckpt_path={ckpt_path}"])
    return f"Its run was started with these overrides; resume with:\n  {command}"


def check_compatible(
    ckpt_path: str, model: LightningModule, ckpt: dict[str, Any] | None = None
) -> None:
    """Fail with a readable list of differences, before any training and before anything in the
    run directory is touched, when `ckpt_path` cannot be loaded into `model` (a model built on the
    meta device will do: only shapes and hyperparameters are compared). Different settings that
    keep the shapes (say, another activation) only warn: they may be intended. `ckpt`: the
    checkpoint's dict, when already read."""
    ckpt = ckpt if ckpt is not None else read_checkpoint(ckpt_path)
    settings = _setting_differences(ckpt.get("hyper_parameters", {}), dict(model.hparams))
    tensors = _tensor_differences(ckpt.get("state_dict", {}), model.state_dict())
    if tensors:
        lines = "\n  ".join(settings + tensors[:8] + ["..."] * (len(tensors) > 8))
        raise UserValueError(
            f"Checkpoint {ckpt_path} does not fit the model of this run:\n  {lines}\n"
            "Resume with the data and model settings of the run that wrote it (image_size and "
            f"channels come from the data config). {resume_command(ckpt_path)}"
        )
    if settings:
        log.warning("Resuming with settings unlike the checkpoint's: %s", "; ".join(settings))
