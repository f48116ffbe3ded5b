"""`python -m dcgan_lightning [+experiment=NAME] [key=value ...]`: the Hydra entry point.

Composing the config (`--help`, `--cfg job`) imports neither torch nor Lightning: `train` is
imported when a run starts.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from dcgan_lightning import run_guard
from dcgan_lightning.cli import mark_task_started, run_cli
from dcgan_lightning.compose import CONF_DIR
from dcgan_lightning.errors import USER_ERROR_STATUS, UserError, exit_with_message, user_error

log = logging.getLogger(__name__)
CONFIG_PATH = str(CONF_DIR)  # conf/ in a checkout, dcgan_lightning/conf in a wheel

__all__ = ["USER_ERROR_STATUS", "exit_with_message", "main", "user_error"]


def train(cfg: DictConfig) -> dict[str, float]:
    """`dcgan_lightning.train.train`, imported on first use (it loads torch and Lightning)."""
    from dcgan_lightning.train import train as fit

    return fit(cfg)


def stop_for(err: UserError) -> None:
    """A mistake stopped the run before it trained: report it, then leave its run directory as
    it was (train.log too: the message goes to the console)."""
    try:
        exit_with_message(err)
    finally:
        run_guard.undo()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> Any:
    """Train. In a multirun, return the optimized metric for sweepers, and log a failed job and
    score it +inf instead of stopping the sweep."""
    mark_task_started()
    from dcgan_lightning.sweep import in_multirun, optimized_value, write_result

    if not in_multirun():
        try:
            train(cfg)
        except Exception as err:
            mistake = user_error(err)
            if mistake is None:
                raise
            stop_for(mistake)
        return None
    try:
        metrics = train(cfg)
    except Exception as err:
        log.exception("Job failed; the sweep goes on")
        write_result(
            Path(cfg.paths.output_dir), {}, "failed", "".join(traceback.format_exception(err))
        )
        return float("inf")
    return optimized_value(metrics, cfg.optimized_metric)


if __name__ == "__main__":
    run_cli(main, "train", CONFIG_PATH)
