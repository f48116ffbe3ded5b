"""conf/train.yaml composed from Python as `python -m dcgan_lightning` would (benchmarks, tests)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_train_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The run config for `overrides`, writing to `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # `${hydra:...}` interpolations read it
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run, where HydraConfig holds it
        cfg.paths.output_dir = str(output_dir)
    return cfg
