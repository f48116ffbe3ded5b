"""conf/train.yaml composed from Python as `python -m dcgan_lightning` would (benchmarks, tests)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict


def _conf_dir() -> Path:
    """The configs: `dcgan_lightning/conf` in a wheel or `pip install .` (setup.py maps the repo's
    top-level conf/ there at build time), else the repo's conf/ beside the package (a checkout, or
    an editable install, which runs the checkout's files)."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if (installed / "train.yaml").is_file() else package.parent / "conf"


CONF_DIR = _conf_dir()


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
