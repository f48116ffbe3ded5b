"""`python -m dcgan_lightning [+experiment=NAME] [key=value ...]`: the Hydra entry point."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dcgan_lightning.sweep import in_multirun, optimized_value, write_result
from dcgan_lightning.train import train

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train; return the optimized metric for sweepers. In a multirun a failed job is logged and
    scored +inf instead of stopping the sweep."""
    try:
        metrics = train(cfg)
    except Exception as err:
        if not in_multirun():
            raise
        log.exception("Job failed; the sweep goes on")
        write_result(
            Path(cfg.paths.output_dir), {}, "failed", "".join(traceback.format_exception(err))
        )
        return float("inf")
    return optimized_value(metrics, cfg.optimized_metric)


if __name__ == "__main__":
    main()
