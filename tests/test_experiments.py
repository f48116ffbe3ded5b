"""Every seed's experiment composes with its pinned set-up and trains on fixture data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from dcgan_lightning.data import cache
from dcgan_lightning.train import train
from tests.conftest import compose_config, tiny
from tests.test_data import write_celeba, write_idx, write_images


def artworks(data: Path) -> None:  # nested as the Kaggle zip nests them
    write_images(data / "best-artworks" / "images" / "images" / "Pablo_Picasso", 17)
    write_images(data / "best-artworks" / "images" / "images" / "Rembrandt", 16)


def afhq(data: Path) -> None:
    for kind in ("cat", "dog", "wild"):
        write_images(data / "afhq" / "train" / kind, 6, size=(64, 64))
    write_images(data / "afhq" / "val" / "cat", 5)  # not the training split


FIXTURES: dict[str, tuple[Callable[[Path], None], int]] = {  # writer, training images it makes
    "picasso": (artworks, 17),
    "picasso_plus": (artworks, 17),
    "rembrandt": (artworks, 16),
    "fashion_mnist": (
        lambda data: write_idx(
            data / "FashionMNIST" / "raw" / "train-images-idx3-ubyte",
            np.random.default_rng(0).integers(0, 256, (20, 28, 28)),
            gz=True,
        ),
        20,
    ),
    "celeba": (lambda data: write_celeba(data / "celeba", [0] * 16 + [1, 2]), 16),
    "animals": (afhq, 18),
    "monet": (
        lambda data: write_images(data / "gan-getting-started" / "monet_jpg", 16, (256, 256)),
        16,
    ),
}

# The seeds' set-ups, as each experiment must pin them.
PINNED = {
    "picasso": {"model.generator.arch": "upsample", "model.z_dim": 128, "data.batch_size": 64,
                "model.generator.features": 64, "data.image_size": 64, "trainer.max_epochs": 400,
                "data.folder": "Pablo_Picasso", "seed": 0},
    "picasso_plus": {"model.generator.arch": "upsample", "model.z_dim": 128,
                     "model.discriminator.spectral_norm": True, "model.loss": "hinge",
                     "model.diffaugment": ["color", "translation", "cutout"],
                     "model.ema.decay": 0.99,
                     "data.folder": "Pablo_Picasso", "seed": 0},
    "rembrandt": {"model.generator.arch": "upsample", "model.z_dim": 128, "data.batch_size": 64,
                  "trainer.max_epochs": 400, "data.folder": "Rembrandt", "seed": 0},
    "fashion_mnist": {"data.channels": 1, "data.image_size": 32, "seed": 1},
    "celeba": {"data.image_size": 64, "model.optimizer_g.lr": 2e-4, "model.optimizer_d.lr": 2e-4,
               "model.noise": "normal", "data.crop": 178, "seed": 1},
    "animals": {"model.z_dim": 100, "data.batch_size": 128, "data.image_size": 64,
                "model.generator.activation": "leaky_relu", "model.optimizer_g.lr": 2e-4,
                "model.generator.linear_projection": True,
                "trainer.max_epochs": 150, "data.folder": "train", "seed": 2},
    "monet": {"data.image_size": 64, "data.folder": "monet_jpg",
              "data.kaggle.competition": True, "seed": 4},
}  # fmt: skip


def compose(tmp_path: Path, name: str, *overrides: str) -> DictConfig:
    return compose_config([f"+experiment={name}", *overrides], tmp_path / "run")


@pytest.mark.parametrize("name", list(FIXTURES))
def test_experiment_pins_the_seed_set_up(tmp_path: Path, name: str) -> None:
    cfg = compose(tmp_path, name)
    assert cfg.task_name == name and name.split("_")[0] in " ".join(cfg.tags)
    for key, value in PINNED[name].items():
        assert OmegaConf.select(cfg, key) == value, key
    assert cfg.data.root.startswith(cfg.paths.data_dir)  # data under ${paths.data_dir}
    if name in ("picasso", "picasso_plus", "rembrandt"):
        assert cfg.model.discriminator.dropout > 0


@pytest.mark.parametrize("name", list(FIXTURES))
def test_experiment_trains_on_fixture_data(tmp_path: Path, name: str) -> None:
    """fast_dev_run with the experiment's own datamodule, shrunk (32 px, 8 features)."""
    cfg = tiny(compose(tmp_path, name, "+trainer.fast_dev_run=true"))
    write, count = FIXTURES[name]
    write(Path(cfg.paths.data_dir))
    with open_dict(cfg):
        cfg.data.image_size = 32
        cfg.data.download = False
        cfg.data.batch_size = 8  # the painting sets hold a tenth out: 14 or 15 images train
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    held = 0 if datamodule.holdout_images is None else len(datamodule.holdout_images)
    assert len(datamodule.images) + held == count
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss_d_epoch"]))
    assert (Path(cfg.paths.output_dir) / "config.yaml").is_file()
    cache.clear_memory()


@pytest.mark.parametrize("size", [128, 256])
def test_monet_larger_sizes(tmp_path: Path, size: int) -> None:
    cfg = compose(tmp_path, "monet", f"data.image_size={size}", "data.download=false")
    FIXTURES["monet"][0](Path(cfg.paths.data_dir))
    datamodule = instantiate(cfg.data)
    assert datamodule.load_images().shape == (16, 3, size, size)
    cache.clear_memory()
