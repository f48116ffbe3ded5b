"""The framework used as an installed package: a wheel carries every config under conf/, runs from
any directory without the checkout, and a user's own config folder adds experiments and datasets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from dcgan_lightning.compose import CONF_DIR, compose_train_config
from tests.conftest import REPO

# What a wheel is built from: the files a clone has (no outputs, caches or .venv).
SOURCES = ("conf", "dcgan_lightning", "pyproject.toml", "setup.py", "README.md")


def build_and_install(tmp_path: Path) -> Path:
    """Build a wheel from a copy of the checkout (no network, no build isolation) and install it
    into a fresh target folder; returns the folder."""
    src, wheels, target = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, src],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("dcgan_lightning-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", target, wheel], check=True, capture_output=True
    )
    return target


def write_images(folder: Path, n: int, size: int = 32) -> None:
    """`n` small RGB PNGs, each a different flat colour."""
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (size, size), (7 * i % 256, 50, 255 - 5 * i % 256)).save(
            folder / f"{i:03d}.png"
        )


def run_installed(cwd: Path, site: Path, *args: str) -> subprocess.CompletedProcess:
    """`python <args>` in `cwd` with only the installed package on PYTHONPATH (not the checkout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "HYDRA_"))}
    env.update(PYTHONPATH=str(site), HOME=str(cwd / "home"), WANDB_MODE="offline")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_a_wheel_carries_every_config_and_trains_from_any_directory(tmp_path: Path) -> None:
    site = build_and_install(tmp_path)
    configs = sorted(str(p.relative_to(CONF_DIR)) for p in CONF_DIR.rglob("*.yaml"))
    installed = site / "dcgan_lightning" / "conf"
    assert sorted(str(p.relative_to(installed)) for p in installed.rglob("*.yaml")) == configs

    work = tmp_path / "work"  # neither the checkout nor the install folder
    write_images(work / "data" / "best-artworks" / "Pablo_Picasso", 40)
    (work / "home").mkdir()
    where = run_installed(
        work,
        site,
        "-c",
        "import importlib.util; print(importlib.util.find_spec('dcgan_lightning').origin)",
    )
    assert Path(where.stdout.strip()) == site / "dcgan_lightning" / "__init__.py", where.stderr

    result = run_installed(
        work,
        site,
        "-m",
        "dcgan_lightning",
        "+experiment=picasso",
        "++trainer.fast_dev_run=true",
        "paths.data_dir=data",  # relative to the launch directory
        "logger=csv",
        "data.batch_size=8",
        "model.generator.features=8",
        "model.discriminator.features=8",
        "metrics.download=false",
        "metrics.num_samples=16",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    (run,) = (work / "outputs" / "picasso" / "runs").iterdir()
    hydra = OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra
    main_source = next(s for s in hydra.runtime.config_sources if s.provider == "main")
    assert main_source.path == str(installed)  # the installed configs, not the checkout's
    assert hydra.runtime.choices["model"] == "upsample"  # picasso's own model
    assert OmegaConf.load(run / "config.yaml").data.folder == "Pablo_Picasso"
    log = (run / "train.log").read_text()  # stdout is a pipe: progress as lines
    assert "epoch 0/0 batch 1/1 | mean loss_d" in log and "Run summary: epoch 0/0 done" in log

    generate = run_installed(work, site, "-m", "dcgan_lightning.generate", "--cfg", "job")
    assert generate.returncode == 0, generate.stdout + generate.stderr
    assert "ckpt_path" in generate.stdout  # conf/generate.yaml, from the install


def write_user_configs(folder: Path) -> None:
    """A user's config folder: a dataset built on the packaged image_folder, and an experiment."""
    (folder / "data").mkdir(parents=True)
    (folder / "experiment").mkdir()
    (folder / "data" / "my_photos.yaml").write_text(
        "defaults:\n  - image_folder\nroot: /data/my_photos\nimage_size: 32\n"
    )
    (folder / "experiment" / "my_photos.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /data: my_photos\n  - override /model: dcgan_plus\n  - _self_\n"
        "task_name: my_photos\ntrainer:\n  max_epochs: 50\n"
    )
    (folder / "experiment" / "van_gogh.yaml").write_text(  # built on a packaged experiment
        "# @package _global_\ndefaults:\n  - picasso\n  - _self_\n"
        "task_name: van_gogh\ndata:\n  folder: Vincent_van_Gogh\n"
    )


def test_a_users_own_config_folder_adds_experiments_and_datasets(tmp_path: Path) -> None:
    write_user_configs(tmp_path / "my_conf")
    search = f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"  # what --config-dir adds
    try:
        cfg = compose_train_config([search, "+experiment=my_photos"], tmp_path / "run")
        assert cfg.task_name == "my_photos" and cfg.trainer.max_epochs == 50
        assert cfg.data.root == "/data/my_photos" and cfg.data.image_size == 32
        assert cfg.data.holdout is None  # the rest from the packaged conf/data/image_folder.yaml
        assert cfg.model.generator.features == 64 and cfg.model.ema  # model=dcgan_plus
        cfg = compose_train_config([search, "+experiment=van_gogh"], tmp_path / "run")
        assert (cfg.task_name, cfg.data.folder) == ("van_gogh", "Vincent_van_Gogh")
        assert cfg.model.optimizer_g.lr == 3.0e-3 and cfg.trainer.max_epochs == 400  # picasso's
        cfg = compose_train_config([search, "data=my_photos"], tmp_path / "run")
        assert cfg.data._target_.endswith("ImageFolderDataModule") and cfg.data.image_size == 32
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.slow
def test_the_cli_finds_a_users_experiment_with_config_dir(tmp_path: Path) -> None:
    write_user_configs(tmp_path / "my_conf")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcgan_lightning",
            "--config-dir",
            str(tmp_path / "my_conf"),
            "+experiment=my_photos",
            "--cfg",
            "job",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    cfg = OmegaConf.create(result.stdout)
    assert (cfg.task_name, cfg.data.root, cfg.trainer.max_epochs) == (
        "my_photos",
        "/data/my_photos",
        50,
    )
