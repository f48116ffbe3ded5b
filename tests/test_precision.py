"""Mixed precision, gradient clipping under AMP and optimizer-step counting, by real tiny fits."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict

from dcgan_lightning import precision
from dcgan_lightning.precision import amp_precision
from dcgan_lightning.train import train
from tests.conftest import requires_cuda


def fit(cfg: DictConfig, *callbacks: Callback) -> tuple[pl.Trainer, pl.LightningModule]:
    """What `train(cfg)` does, keeping the trainer and model in hand; no loggers."""
    pl.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=datamodule.image_size, channels=datamodule.channels)
    trainer = instantiate(cfg.trainer, callbacks=list(callbacks), logger=False)
    trainer.fit(model, datamodule=datamodule)
    return trainer, model


def nets_params(model: pl.LightningModule) -> dict[str, torch.Tensor]:
    nets = {"G": model.generator, "D": model.discriminator}
    return {
        f"{k}.{n}": p.detach().clone() for k, m in nets.items() for n, p in m.named_parameters()
    }


class Snapshot(Callback):
    """G and D parameters at the start of fit, and the dtype of D's logits in training."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = nets_params(pl_module)
        self.logit_dtypes: set[torch.dtype] = set()
        pl_module.discriminator.register_forward_hook(
            lambda m, args, out: self.logit_dtypes.add(out.dtype) if m.training else None
        )


def assert_trained(trainer: pl.Trainer, model: pl.LightningModule, snap: Snapshot) -> None:
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if "loss" in k}
    assert {"train/loss_d_step", "train/loss_g_step"} <= losses.keys()
    assert all(math.isfinite(v) for v in losses.values()), losses
    final = nets_params(model)
    unchanged = [k for k, p in snap.initial.items() if torch.equal(p, final[k].to(p.device))]
    assert not unchanged, f"not updated: {unchanged}"
    images = model.generate(model.fixed_noise[:4])
    assert images.dtype == torch.float32 and images.shape[0] == 4
    assert torch.isfinite(images).all()
    assert not torch.equal(images[0], images[1])  # still a function of z


# -- the precision each trainer config resolves to ---------------------------------------------
@pytest.mark.parametrize(
    ("cpu_bf16", "gpu_bf16", "cpu", "gpu"),
    [(False, False, "32-true", "16-mixed"), (True, True, "bf16-mixed", "bf16-mixed")],
)
def test_trainer_configs_resolve_precision(
    make_cfg, monkeypatch, cpu_bf16: bool, gpu_bf16: bool, cpu: str, gpu: str
) -> None:
    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: gpu_bf16)
    assert make_cfg().trainer.precision == cpu  # resolved when read, on the training machine
    assert make_cfg("trainer=gpu").trainer.precision == gpu
    ddp = make_cfg("trainer=ddp", "trainer.num_nodes=2", "trainer.sync_batchnorm=true").trainer
    assert (ddp.precision, ddp.num_nodes, ddp.sync_batchnorm) == (gpu, 2, True)
    assert ddp.strategy._target_ == "dcgan_lightning.strategy.GANDDPStrategy"


def test_amp_precision_falls_back_without_native_bf16(monkeypatch) -> None:
    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (amp_precision("cpu"), amp_precision("gpu")) == ("32-true", "16-mixed")
    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: True)
    assert (amp_precision("cpu"), amp_precision("gpu")) == ("bf16-mixed", "bf16-mixed")
    with pytest.raises(ValueError, match="cpu"):
        amp_precision("tpu")


# -- training at each precision ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("precision_name", "channels_last", "logits"),
    [("32-true", False, torch.float32), ("bf16-mixed", True, torch.bfloat16)],
)
def test_cpu_precision_trains(make_cfg, precision_name, channels_last, logits) -> None:
    cfg = make_cfg(f"trainer.precision={precision_name}", f"model.channels_last={channels_last}")
    snap = Snapshot()
    trainer, model = fit(cfg, snap)
    assert snap.logit_dtypes == {logits}  # autocast really was on (or off)
    assert_trained(trainer, model, snap)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("precision_name", ["16-mixed", "bf16-mixed", "32-true"])
def test_gpu_precision_trains(make_cfg, precision_name) -> None:
    if precision_name == "bf16-mixed" and amp_precision("gpu") != "bf16-mixed":
        pytest.skip("this GPU has no native bf16")
    snap = Snapshot()
    trainer, model = fit(make_cfg("trainer=gpu", f"trainer.precision={precision_name}"), snap)
    assert_trained(trainer, model, snap)
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    assert (scaler is not None) == (precision_name == "16-mixed")  # one GradScaler, shared


# -- gradient clipping in manual optimization ----------------------------------------------------
class GradNorms(Callback):
    """Gradient norm per optimizer step: before the module's clipping hook and at the update."""

    def __init__(self) -> None:
        self.before: list[float] = []
        self.applied: list[float] = []

    @staticmethod
    def norm(optimizer: torch.optim.Optimizer) -> float:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:  # after the step: the gradients Adam really used
            optimizer.register_step_post_hook(lambda opt, *_: self.applied.append(self.norm(opt)))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before.append(self.norm(optimizer))  # callbacks run before the module's hook


def test_grad_clip_norm_clips_under_bf16(make_cfg) -> None:
    clip = 1e-3
    norms = GradNorms()
    fit(make_cfg("trainer.precision=bf16-mixed", f"model.grad_clip_norm={clip}"), norms)
    assert len(norms.before) == len(norms.applied) == 4  # 2 batches x (D + G)
    assert min(norms.before) > clip  # clipping had something to do
    assert max(norms.applied) <= clip * (1 + 1e-3)


def test_no_clipping_by_default(make_cfg) -> None:
    norms = GradNorms()
    fit(make_cfg(), norms)
    assert norms.before == pytest.approx(norms.applied)


# -- what global_step and max_steps count ------------------------------------------------------
class CountBatches(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *args: object) -> None:
        self.batches += 1


@pytest.mark.parametrize(
    ("d_steps_per_g_step", "max_steps", "batches", "global_step"),
    [
        (1, -1, 4, 8),  # a D and a G step per batch
        (2, -1, 4, 6),  # 4 D steps + 2 G steps
        (1, 4, 2, 4),  # max_steps=4 stops after 2 batches
    ],
)
def test_global_step_counts_optimizer_steps(
    make_cfg, d_steps_per_g_step, max_steps, batches, global_step
) -> None:
    cfg = make_cfg(
        f"model.d_steps_per_g_step={d_steps_per_g_step}", f"trainer.max_steps={max_steps}"
    )
    with open_dict(cfg):
        cfg.trainer.limit_train_batches = 4  # the whole tiny dataset: 64 images, batch 16
    counter = CountBatches()
    trainer, _ = fit(cfg, counter)
    assert (counter.batches, trainer.global_step) == (batches, global_step)


def test_logger_step_axis_counts_batches(make_cfg) -> None:
    cfg = make_cfg("logger=csv", "metrics=none")
    with open_dict(cfg):
        cfg.trainer.limit_train_batches = 4
    train(cfg)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss_d_step")})
    assert steps == [0, 1, 2, 3]  # one per batch, while global_step reached 8
