"""`python -m dcgan_lightning [+experiment=NAME] [key=value ...]`: the Hydra entry point."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dcgan_lightning.compose import CONF_DIR
from dcgan_lightning.errors import UserError
from dcgan_lightning.sweep import in_multirun, optimized_value, write_result
from dcgan_lightning.train import train

log = logging.getLogger(__name__)


USER_ERROR_STATUS = 2  # the shell's "wrong usage", apart from a crash's 1


def user_error(err: BaseException) -> UserError | None:
    """The `UserError` behind `err`, if any: Hydra's `instantiate` wraps what a constructor raises
    (a model setting that can't work) in an `InstantiationException`."""
    while err is not None and not isinstance(err, UserError):
        err = err.__cause__
    return err


def exit_with_message(err: UserError) -> None:
    """A user's mistake: its message alone (console and train.log), exit status 2. The traceback
    only with HYDRA_FULL_ERROR=1, as for Hydra's own errors."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    log.error("%s", err)
    sys.exit(USER_ERROR_STATUS)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train. In a multirun, return the optimized metric for sweepers, and log a failed job and
    score it +inf instead of stopping the sweep."""
    if not in_multirun():
        try:
            train(cfg)
        except Exception as err:
            mistake = user_error(err)
            if mistake is None:
                raise
            exit_with_message(mistake)
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
    main()
