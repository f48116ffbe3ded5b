"""`python -m dcgan_lightning [+experiment=NAME] [key=value ...]`: the Hydra entry point."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dcgan_lightning.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric", ""))


if __name__ == "__main__":
    main()
