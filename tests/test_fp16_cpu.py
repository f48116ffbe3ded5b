"""`trainer.precision=16-mixed` on a CPU: real fp16 autocast and one GradScaler for both optimizers,
the path GPUs without bf16 (V100, T4) take, exercised on any machine."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.precision import MixedPrecision

from dcgan_lightning.precision import trainer_precision
from dcgan_lightning.train import train


class Watch(pl.Callback):
    """Records D's activation dtype, the scale, and each optimizer's gradient norm at its step."""

    def __init__(self, inf_in_first_d_backward: bool = False) -> None:
        self.inf = inf_in_first_d_backward
        self.dtypes, self.scales, self.norms = set(), [], {"G": [], "D": []}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.discriminator.register_forward_hook(lambda m, i, out: self.dtypes.add(out.dtype))
        self.initial = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        for name, opt in zip("GD", trainer.optimizers):
            opt.register_step_pre_hook(lambda o, a, k, name=name: self._at_step(o, name))
        if self.inf:
            weight = next(pl_module.discriminator.parameters())
            self.handle = weight.register_hook(self._poison)

    def _poison(self, grad: torch.Tensor) -> torch.Tensor:
        self.handle.remove()  # the first D backward only
        return grad * float("inf")

    def _at_step(self, optimizer: torch.optim.Optimizer, name: str) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        self.norms[name].append(float(torch.norm(torch.stack([g.norm() for g in grads]))))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.scales.append(float(trainer.precision_plugin.scaler.get_scale()))
        if batch_idx == 0:
            self.after_first = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def fit(make_cfg, *overrides: str, watch: Watch) -> pl.LightningModule:
    cfg = make_cfg("trainer.precision=16-mixed", "metrics=none", "logger=none", *overrides)
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=dm.image_size, channels=dm.channels)
    precision = trainer_precision(cfg.trainer)
    # A small first scale: GradScaler's 2**16 overflows fp16 in the first steps of a fresh DCGAN
    # (a skipped step and a halved scale: correct, but it would blur what each test checks).
    precision["plugins"][0].scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    trainer = instantiate(cfg.trainer, callbacks=[watch], logger=False, **precision)
    trainer.fit(model, datamodule=dm)
    return trainer


def test_16_mixed_on_cpu_is_fp16_with_one_scaler_for_both_optimizers(make_cfg) -> None:
    watch = Watch()
    trainer = fit(make_cfg, watch=watch)
    plugin = trainer.precision_plugin
    assert isinstance(plugin, MixedPrecision) and plugin.precision == "16-mixed"
    assert plugin.device == "cpu" and isinstance(plugin.scaler, torch.amp.GradScaler)
    assert watch.dtypes == {torch.float16}  # not bf16, as Lightning alone would make it
    assert len(watch.norms["G"]) == len(watch.norms["D"]) == 2
    # Gradients at the step are unscaled: of a DCGAN's size, not 2**8 times larger.
    assert all(0 < n < 100 for n in watch.norms["G"] + watch.norms["D"])
    assert watch.scales == [2.0**8, 2.0**8]  # no overflow, no skipped step


def test_an_inf_gradient_skips_only_that_optimizers_step_and_lowers_the_scale(make_cfg) -> None:
    watch = Watch(inf_in_first_d_backward=True)
    fit(make_cfg, watch=watch)
    initial, after = watch.initial, watch.after_first
    assert all(torch.equal(initial[n], after[n]) for n in initial if n.startswith("discriminator"))
    assert not all(torch.equal(initial[n], after[n]) for n in initial if n.startswith("generator"))
    assert watch.scales[0] == 2.0**7  # halved once, from 2**8
    assert len(watch.norms["D"]) == 1 and len(watch.norms["G"]) == 2  # D's first step: skipped


def test_clipping_sees_unscaled_gradients(make_cfg) -> None:
    watch = Watch()
    fit(make_cfg, "model.grad_clip_norm=0.001", watch=watch)
    # Clipped after unscaling: the stepped norm is the clip norm itself. Clipping scaled
    # gradients would leave 0.001 / 2**8 after the unscale.
    for norm in watch.norms["G"] + watch.norms["D"]:
        assert 0.0009 < norm < 0.00101


def test_dcgan_plus_trains_finite_under_16_mixed_on_cpu(make_cfg) -> None:
    cfg = make_cfg("trainer.precision=16-mixed", "model=dcgan_plus", "logger=csv", "metrics=none")
    metrics = train(cfg)
    for key in ("loss_d", "loss_g", "d_real", "d_fake"):
        assert math.isfinite(metrics[f"train/{key}_epoch"]), key


def test_other_precisions_and_accelerators_are_left_to_lightning(make_cfg) -> None:
    assert trainer_precision(make_cfg("trainer.precision=bf16-mixed").trainer) == {}
    assert trainer_precision(make_cfg("trainer=gpu", "trainer.precision=16-mixed").trainer) == {}
