"""Benchmarks: each section module exposes `run(quick) -> list[dict]` rows for one table.

A row is {"section", "case", "value", "unit", "note"}. `python -m dcgan_lightning.bench` runs every
section module of this package and prints the table.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def row(section: str, case: str, value: float, unit: str, note: str = "") -> dict:
    """One line of the benchmark table."""
    return {"section": section, "case": case, "value": float(value), "unit": unit, "note": note}


def compose_train_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """conf/train.yaml composed as `python -m dcgan_lightning` would, writing to `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # `${hydra:...}` interpolations read it
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(output_dir)
    return cfg


def median_seconds(fn: Callable[[], object], repeats: int, warm_up: bool = False) -> float:
    """Median wall time of `repeats` calls of `fn`, after one untimed call when `warm_up`."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
