"""train(cfg) end to end on the real config: the GAN step, learning, outputs, resume, bad input."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from dcgan_lightning.data.base import ImageDataModule
from dcgan_lightning.train import train
from tests.conftest import REPO, compose_config, tiny


class SolidColour(ImageDataModule):
    """Every image one colour: the simplest thing a GAN can learn."""

    def __init__(self, colour: list[int], num_images: int = 256, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.colour, self.num_images = colour, num_images

    @property
    def fingerprint(self) -> str:
        return f"solid-{self.colour}"

    def load_images(self) -> torch.Tensor:
        pixel = torch.tensor(self.colour, dtype=torch.uint8).view(1, 3, 1, 1)
        return pixel.expand(self.num_images, 3, self.image_size, self.image_size).clone()


class StepRecorder(pl.Callback):
    """Snapshots every parameter before each optimizer step, so each step's effect is known."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[str, dict[str, torch.Tensor]]] = []

    def _snapshot(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        which = "G" if optimizer is trainer.optimizers[0] else "D"
        self.snapshots.append((which, self._snapshot(pl_module)))

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.snapshots.append(("end", self._snapshot(pl_module)))


def test_fast_dev_run_writes_the_run_outputs(make_cfg) -> None:
    cfg = make_cfg("+trainer.fast_dev_run=true")
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    for key in (
        "train/loss_d_epoch",
        "train/loss_g_epoch",
        "train/d_real_epoch",
        "train/d_fake_epoch",
    ):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key]))
    assert 0.0 < metrics["train/d_real_epoch"] < 1.0 and 0.0 < metrics["train/d_fake_epoch"] < 1.0
    assert (out / "config.yaml").is_file()
    assert (out / "samples" / "epoch_0000.png").is_file()


def test_each_step_updates_only_its_own_network(make_cfg) -> None:
    cfg = make_cfg("model.d_steps_per_g_step=2")
    with open_dict(cfg):
        cfg.callbacks = {}
    recorder = StepRecorder()
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=dm.image_size, channels=dm.channels)
    trainer = instantiate(cfg.trainer, callbacks=[recorder], logger=False, limit_train_batches=2)
    trainer.fit(model, datamodule=dm)

    # batch 0: D step only (2 D steps per G step); batch 1: D step, then G step.
    assert [s[0] for s in recorder.snapshots] == ["D", "end", "D", "G", "end"]
    for (which, before), (_, after) in zip(recorder.snapshots, recorder.snapshots[1:]):
        if which == "end":
            continue
        changed = {n.split(".")[0] for n in before if not torch.equal(before[n], after[n])}
        assert changed == {"discriminator" if which == "D" else "generator"}
    assert trainer.global_step == 3  # Lightning counts optimizer steps, not batches


def test_generator_learns_a_solid_colour(make_cfg) -> None:
    target = torch.tensor([230, 40, 140]) / 127.5 - 1  # in the generator's [-1, 1]
    cfg = make_cfg(
        "+data.colour=[230,40,140]",
        "data._target_=tests.test_train.SolidColour",
        "~data.seed",
        "callbacks=none",
        "logger=none",
    )
    with open_dict(cfg):
        cfg.trainer.max_epochs = 16
        cfg.model.optimizer_g.lr = cfg.model.optimizer_d.lr = 1e-3
        cfg.trainer.limit_train_batches = None
        cfg.data.num_images = 512
        cfg.data.batch_size = 32
        cfg.model.generator.features = 16
        cfg.model.discriminator.features = 16
    pl.seed_everything(0)
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=dm.image_size, channels=dm.channels)
    before = model.generate(model.fixed_noise).mean(dim=(0, 2, 3))
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    trainer.fit(model, datamodule=dm)
    after = model.generate(model.fixed_noise).mean(dim=(0, 2, 3))
    assert (before - target).abs().max() > 0.6
    assert (after - target).abs().max() < 0.15, after


def test_resume_restores_optimizers_epoch_and_fixed_noise(make_cfg, tmp_path: Path) -> None:
    first = make_cfg()
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    epochs_done = saved["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"]
    assert epochs_done == 1 and saved["global_step"] == 4  # 2 batches x (D + G)

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.epoch = trainer.current_epoch
            self.optimizer_states = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers]
            self.fixed_noise = pl_module.fixed_noise.clone()

    second = tiny(compose_config([f"ckpt_path={last}"], tmp_path / "resumed"))
    with open_dict(second):
        second.trainer.max_epochs = 2
        second.callbacks.probe = {"_target_": "tests.test_train.Probe"}
    probe = Probe()
    import tests.test_train as this

    this.Probe = lambda: probe  # the config's _target_ returns our instance
    train(second)
    assert probe.epoch == 1
    for restored, original in zip(probe.optimizer_states, saved["optimizer_states"]):
        first_param = next(iter(original["state"]))
        assert restored["state"][first_param]["step"] == original["state"][first_param]["step"]
        assert torch.equal(
            restored["state"][first_param]["exp_avg"], original["state"][first_param]["exp_avg"]
        )
    assert torch.equal(probe.fixed_noise, saved["state_dict"]["fixed_noise"])
    resumed = torch.load(
        Path(second.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True
    )
    epochs_done = resumed["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"]
    assert epochs_done == 2 and resumed["global_step"] == 8


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data.image_size", 48, "power of two in \\[32, 256\\]"),
        ("data.image_size", 512, "power of two in \\[32, 256\\]"),
        ("model.z_dim", 0, "z_dim must be positive"),
        ("data.batch_size", 0, "batch_size must be positive"),
        ("model.noise", "gaussian", "noise must be 'normal' or 'uniform'"),
    ],
)
def test_bad_values_fail_before_training(make_cfg, key: str, value, message: str) -> None:
    cfg = make_cfg()
    OmegaConf.update(cfg, key, value)
    with pytest.raises((ValueError, InstantiationException), match=message):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_unknown_config_option_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(HydraException, match="Available options") as err:
        compose_config(["model=nope"], tmp_path)
    assert "dcgan" in str(err.value) and "upsample" in str(err.value)


def config_options() -> list[str]:
    groups = ("data", "model", "trainer", "callbacks", "logger", "metrics")
    return [f"{g}={p.stem}" for g in groups for p in sorted((REPO / "conf" / g).glob("*.yaml"))]


@pytest.mark.parametrize("override", config_options())
def test_every_config_option_composes(tmp_path: Path, override: str) -> None:
    cfg = compose_config([override], tmp_path)
    group, name = override.split("=")
    assert (cfg is not None and group in cfg) or name == "none"
