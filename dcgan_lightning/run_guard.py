"""A run that a mistake stops before it trains leaves nothing behind.

Hydra creates the run directory, writes `.hydra/` and opens `train.log` before the task function
runs, so a mistake found there (a missing checkpoint, `trainer=gpu` without a GPU) would leave a
directory for a run that never started, or, for a resume, change files of the run it resumes. This
Hydra callback notes what the run directory holds before Hydra touches it; `undo()` (called when
a `UserError` ends the task) puts it back: a new directory is removed, with the parents Hydra
created for it; an existing one gets its `.hydra/` files back and `train.log` cut to its old length.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


@dataclass
class _Before:
    run_dir: Path
    created: Path | None  # the highest folder Hydra will create (None: run_dir exists)
    hydra_files: dict[Path, bytes] = field(default_factory=dict)
    log_size: int | None = None  # train.log's length, None: no train.log


_before: _Before | None = None


def _snapshot(run_dir: Path) -> _Before:
    if not run_dir.exists():
        created = run_dir
        while not created.parent.exists():
            created = created.parent
        return _Before(run_dir, created)
    before = _Before(run_dir, None)
    hydra_dir = run_dir / ".hydra"
    if hydra_dir.is_dir():
        before.hydra_files = {p: p.read_bytes() for p in hydra_dir.rglob("*") if p.is_file()}
    log = run_dir / "train.log"
    before.log_size = log.stat().st_size if log.is_file() else None
    return before


class RunGuard(Callback):
    """Notes the state of `hydra.run.dir` before Hydra writes to it (single runs only: a sweep
    job's failure is recorded in its own new directory)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _before
        HydraConfig.instance().set_config(config)  # as run_job does next: `${hydra:...}` resolves
        _before = _snapshot(Path(config.hydra.run.dir).absolute())


def undo() -> None:
    """Put the run directory back as it was before this run (see the module docstring)."""
    global _before
    before, _before = _before, None
    if before is None:
        return
    if before.created is not None:
        shutil.rmtree(before.created, ignore_errors=True)
        return
    hydra_dir = before.run_dir / ".hydra"
    for path in sorted(hydra_dir.rglob("*"), reverse=True) if hydra_dir.is_dir() else []:
        if path.is_file() and path not in before.hydra_files:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    for path, content in before.hydra_files.items():
        if not path.is_file() or path.read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    log = before.run_dir / "train.log"
    if before.log_size is None:
        log.unlink(missing_ok=True)
    elif log.is_file() and log.stat().st_size > before.log_size:
        with open(log, "r+b") as f:
            f.truncate(before.log_size)
