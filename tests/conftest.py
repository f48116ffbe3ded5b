"""Shared fixtures: the real Hydra config, composed and shrunk to run in seconds on a CPU."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from dcgan_lightning.compose import compose_train_config

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# `pytest -n N` (pytest-xdist, as `make test` runs): N workers share the CPU, so each gets its share
# of threads, its subprocesses too; oversubscribed OpenMP threads spin-wait on each other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    _THREADS = max(1, (_CPUS or 1) // _WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

multiprocessing.set_forkserver_preload(["dcgan_lightning.train"])  # see rank_start_method

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/train.yaml as the CLI would, with outputs and data under `output_dir`."""
    cfg = compose_train_config(overrides, output_dir)
    with open_dict(cfg):
        cfg.paths.data_dir = str(output_dir / "data")
    return cfg


def rank_start_method() -> str:
    """How tests that need no bitwise-exact run start DDP ranks. A spawned rank imports torch
    and Lightning again (~15 s of CPU on a 2-core machine); `forkserver` forks each from one
    server process that imported them once (see set_forkserver_preload above) and never ran a
    kernel. Plain `fork` would hang: a child's first OpenMP region deadlocks once this process has
    used OpenMP. Lightning hands its ranks this process's seeded RNGs and determinism flags only
    when it spawns them, so runs compared bitwise (tests/test_ddp.py, test_ranks.py,
    test_device_data.py) keep spawn, the CLI's path. Lightning refuses to fork once CUDA is
    initialised here (a GPU test ran first): spawn then."""
    return "spawn" if torch.cuda.is_initialized() else "forkserver"


def fast_ranks() -> str:
    """The override that starts `trainer=ddp_sim`'s ranks with `rank_start_method()`."""
    return f"trainer.strategy.start_method={rank_start_method()}"


def start_ranks(fn: Callable[..., None], *args: object, nprocs: int = 2) -> None:
    """`torch.multiprocessing.spawn(fn, args, nprocs)` with `rank_start_method()`."""
    mp.start_processes(fn, args=args, nprocs=nprocs, start_method=rank_start_method())


def tiny(cfg: DictConfig) -> DictConfig:
    """Shrink a composed config: 1 epoch of 2 batches, small nets, CSV logs only."""
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = 2
        cfg.trainer.log_every_n_steps = 1
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        cfg.model.generator.features = 8
        cfg.model.discriminator.features = 8
        cfg.model.num_fixed_samples = 16
        if "num_images" in cfg.data:
            cfg.data.num_images = 64
        cfg.data.batch_size = 16
        cfg.callbacks.pop("progress_bar", None)
        if cfg.get("metrics"):  # no network in tests; a small, quick evaluation
            cfg.metrics.download = False
            cfg.metrics.num_samples = 32
            cfg.metrics.eval_every_n_epochs = 1
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """`make_cfg("data=shapes", "model.z_dim=8")`: the real config, tiny, writing to tmp_path."""

    def make(*overrides: str, shrink: bool = True) -> DictConfig:
        cfg = compose_config(list(overrides), tmp_path / "run")
        return tiny(cfg) if shrink else cfg

    yield make
    GlobalHydra.instance().clear()
