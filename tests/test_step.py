"""The GAN step's bookkeeping: losses' targets and logged meanings, G-step cadence over the run,
skipped steps, ADA wiring, and a step that never waits for the device between log intervals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

import dcgan_lightning.models.gan_module as gan_module
from dcgan_lightning.divergence import DivergedError
from dcgan_lightning.models.losses import d_outputs, discriminator_loss
from dcgan_lightning.train import train
from tests.test_train import StepRecorder


def fit(cfg, callbacks=()):
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=dm.image_size, channels=dm.channels)
    trainer = instantiate(cfg.trainer, callbacks=list(callbacks), logger=False)
    trainer.fit(model, datamodule=dm)
    return model, trainer


@pytest.mark.parametrize("loss", ["hinge", "lsgan"])
def test_label_smoothing_is_refused_where_there_is_no_target_to_smooth(make_cfg, loss) -> None:
    cfg = make_cfg(f"model.loss={loss}", "model.label_smoothing=0.1")
    refused = r"label_smoothing=0\.1 works with model\.loss"
    with pytest.raises(InstantiationException, match=refused):
        instantiate(cfg.model, image_size=32, channels=3)


def test_smoothed_targets_are_fp32_under_bf16() -> None:
    logits = torch.zeros(8, dtype=torch.bfloat16)
    loss = discriminator_loss("bce", logits, logits, label_smoothing=0.1)
    # BCE(0, t) = log 2 for any target t: the fp32 result, not bf16's rounding of it.
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(2 * math.log(2), rel=1e-6)
    real = torch.full((8,), 4.0, dtype=torch.bfloat16)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.full((8,), 4.0), torch.full((8,), 0.9)
    ) + math.log(2)
    assert discriminator_loss("bce", real, logits, 0.1).item() == pytest.approx(float(expected))


def test_logged_d_outputs_mean_what_each_loss_means() -> None:
    real, fake = torch.full((4,), 2.0), torch.full((4,), -3.0)
    bce = d_outputs("bce", real, fake)  # probabilities
    assert bce["d_real"] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    for loss in ("hinge", "lsgan"):  # raw scores: not log-odds
        assert d_outputs(loss, real, fake) == {"d_real": 2.0, "d_fake": -3.0}


def test_d_steps_per_g_step_counts_batches_over_the_run(make_cfg) -> None:
    cfg = make_cfg("model.d_steps_per_g_step=2", "callbacks=none", "logger=none", "metrics=none")
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 3, 3  # 9 batches, 3 an epoch
    recorder = StepRecorder()
    fit(cfg, [recorder])
    steps = "".join(which for which, _ in recorder.snapshots if which != "end")
    assert steps.count("D") == 9 and steps.count("G") == 4  # batches 2, 4, 6, 8 of the run


def test_a_skipped_g_step_leaves_the_ema_alone_and_inf_stays_out_of_the_means(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gan_module, "generator_loss", lambda *a: torch.tensor(float("inf")))
    cfg = make_cfg(
        "model.on_nonfinite=skip", "+model.ema={decay:0.5,start_step:0}", "callbacks=none",
        "logger=none", "metrics=none",
    )  # fmt: skip
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=dm.image_size, channels=dm.channels)
    ema_before = {n: p.clone() for n, p in model.ema_generator.named_parameters()}
    trainer = instantiate(cfg.trainer, callbacks=[], logger=False)
    with pytest.warns(UserWarning, match="Non-finite loss_g"):
        trainer.fit(model, datamodule=dm)
    for name, p in model.ema_generator.named_parameters():
        assert torch.equal(p, ema_before[name]), name
    assert int(model.ema_generator.n_averaged) == 0
    logged = trainer.callback_metrics
    assert torch.isnan(logged["train/loss_g_epoch"])  # nothing finite: no mean, not inf
    assert torch.isfinite(logged["train/loss_d_epoch"])


def test_deferred_divergence_check_names_the_first_bad_step_and_keeps_the_checkpoint(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, count = gan_module.discriminator_loss, [0]

    def nan_from_fifth(*args, **kwargs):
        count[0] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if count[0] >= 5 else value

    monkeypatch.setattr(gan_module, "discriminator_loss", nan_from_fifth)
    cfg = make_cfg("logger=none", "metrics=none")
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 2, 3
    cfg.trainer.log_every_n_steps = 1000  # read only at the epoch's end and before saving
    cfg.callbacks.model_checkpoint.every_n_epochs = 1
    with pytest.raises(DivergedError) as err:
        train(cfg)
    # Batch 5 of the run (epoch 1, batch 1): global step 8 is its D step.
    assert "Non-finite loss_d (NaN or inf) at global step 8 (detected at epoch 1)" in str(err.value)
    kept = torch.load(Path(cfg.paths.output_dir) / "checkpoints/last.ckpt", weights_only=True)
    assert kept["epoch"] == 0 and all(torch.isfinite(v).all() for v in kept["state_dict"].values())


def test_ada_adapts_logs_and_resumes_exactly(make_cfg, tmp_path: Path) -> None:
    ada = ["model.diffaugment=[translation,cutout]", "model.ada={target:0.01,interval:1,kimg:0.1}"]
    cfg = make_cfg(*ada, "logger=none", "metrics=none", "trainer.precision=32-true")
    cfg.trainer.max_epochs = 2
    metrics = train(cfg)
    assert 0 < metrics["train/ada_p_epoch"] <= 1 and "train/r_t_epoch" in metrics
    whole = torch.load(Path(cfg.paths.output_dir) / "checkpoints/last.ckpt", weights_only=True)
    assert float(whole["state_dict"]["augment.p"]) > 0  # D beats a target near chance: p rises

    first = make_cfg(*ada, "logger=none", "metrics=none", "trainer.precision=32-true")
    first.paths.output_dir = str(tmp_path / "cut")
    train(first)
    resumed = make_cfg(*ada, "logger=none", "metrics=none", "trainer.precision=32-true")
    resumed.paths.output_dir, resumed.trainer.max_epochs = first.paths.output_dir, 2
    resumed.ckpt_path = str(tmp_path / "cut/checkpoints/last.ckpt")
    train(resumed)
    again = torch.load(tmp_path / "cut/checkpoints/last.ckpt", weights_only=True)
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
