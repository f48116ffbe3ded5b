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
def main(cfg: DictConfig) -> float | None:
    """Train. In a multirun, return the optimized metric for sweepers, and log a failed job and
    score it +inf instead of stopping the sweep."""
    if not in_multirun():
        train(cfg)
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
