"""W&B that never blocks a run: offline without a login, resumable, one run per Hydra job."""

from __future__ import annotations

import logging
import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

log = logging.getLogger(__name__)


def has_wandb_credentials() -> bool:
    """True when `wandb login` (netrc) or WANDB_API_KEY provides a key; never prompts."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _previous_run_id(save_dir: Path) -> str | None:
    """The id of the W&B run already in this run directory (a resumed run continues it)."""
    runs = sorted((save_dir / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def run_name_and_group(task_name: str) -> tuple[str, str | None]:
    """Run name: the task and its overrides (in a sweep, only those the sweep varies: the ones not
    typed verbatim on the command line). Group: the sweep's directory, to compare its jobs."""
    if not HydraConfig.initialized():
        return task_name, None
    hydra = HydraConfig.get()
    overrides = [
        o for o in hydra.overrides.task if not o.startswith(("+experiment=", "ckpt_path="))
    ]
    if hydra.mode != RunMode.MULTIRUN:
        return " ".join([task_name, *overrides]), None
    varied = [o for o in overrides if o not in sys.argv[1:]]
    return " ".join([task_name, *varied]), f"{task_name}-{Path(hydra.sweep.dir).name}"


def wandb_logger(save_dir: str, task_name: str, **kwargs: Any) -> WandbLogger:
    """A WandbLogger that goes offline (into `save_dir/wandb`) when there is no login."""
    offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")
    if not offline and not has_wandb_credentials():
        log.warning("W&B: no login found (run `wandb login`), logging offline into %s", save_dir)
        offline = True
    name, group = run_name_and_group(task_name)
    logger = WandbLogger(
        save_dir=save_dir,
        name=name,
        group=group,
        id=_previous_run_id(Path(save_dir)),
        offline=offline,
        **kwargs,
    )
    # Lightning always passes `anonymous` (None when unset), which W&B answers with "The anonymous
    # setting has no effect" on every run: leave the setting unset.
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger


def start_loggers(loggers: list[Logger], config: dict[str, Any], save_dir: str) -> list[Logger]:
    """Log the resolved config to every logger. A failing W&B is dropped with a warning (and a CSV
    logger keeps the metrics locally): W&B trouble never stops training."""
    started = []
    for logger in loggers:
        try:
            logger.log_hyperparams(config)
            started.append(logger)
        except Exception as err:  # wandb raises many kinds: network, auth, service start-up
            if not isinstance(logger, WandbLogger):
                raise
            log.warning("W&B failed to start (%s); training goes on without it.", err)
    if len(started) < len(loggers) and not any(isinstance(lg, CSVLogger) for lg in started):
        fallback = CSVLogger(save_dir, name="csv", version="")
        fallback.log_hyperparams(config)
        started.append(fallback)
    return started


def finish_wandb(loggers: list[Logger]) -> None:
    """Close this job's W&B run (so the next job of a sweep gets its own) and say how to sync it;
    `loggers`: the job's configured loggers. A job without W&B leaves an open run alone (a
    notebook's own, or another job's in the same process)."""
    import wandb

    if wandb.run is None or not any(isinstance(lg, WandbLogger) for lg in loggers):
        return
    offline = wandb.run.settings._offline
    run_dir = Path(wandb.run.dir).parent
    wandb.finish()
    if offline:
        log.info("W&B run saved offline. Upload it with:\n  wandb sync %s", run_dir)
