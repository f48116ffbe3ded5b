"""The loop around the GAN step: Lightning calls only the batch hooks callbacks implement, and the
step values reach the loggers, the progress bar and `callback_metrics` without `self.log`."""

from __future__ import annotations

import csv
import threading
import time
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest
import rich.live
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import Profiler

from dcgan_lightning.callbacks.dispatch import BATCH_HOOKS, skip_unused_batch_hooks
from dcgan_lightning.callbacks.plots import TrainingPlots
from dcgan_lightning.models import gan_module
from dcgan_lightning.train import train

BATCHES = 20
TRAIN_HOOKS = tuple(h for h in BATCH_HOOKS if "validation" not in h)  # no evaluation here


class HookRecorder(Profiler):
    """Every action Lightning profiles: `[Callback]<state key>.<hook>` for each callback call."""

    actions: Counter = Counter()

    def start(self, action_name: str) -> None:
        HookRecorder.actions[action_name] += 1

    def stop(self, action_name: str) -> None:
        pass


class Probe(Callback):
    """What the trainer shows at the end of fit."""

    seen: dict = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Probe.seen = {
            "bar": dict(trainer.progress_bar_metrics),
            "callback": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "callbacks": list(trainer.callbacks),
            "plots": next(c.history for c in trainer.callbacks if isinstance(c, TrainingPlots)),
        }


@pytest.fixture
def default_run(make_cfg, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The default config and callbacks (progress bar on), CSV logs, 20 batches, logging every 10;
    every D loss recorded as computed, every `self.log` call counted."""
    losses, logged = [], Counter()
    real_loss, real_log = gan_module.discriminator_loss, pl.LightningModule.log

    def recording_loss(*args, **kwargs):
        losses.append(float((value := real_loss(*args, **kwargs)).detach()))
        return value

    def counting_log(self, name, *args, **kwargs):
        logged[name] += 1
        return real_log(self, name, *args, **kwargs)

    monkeypatch.setattr(gan_module, "discriminator_loss", recording_loss)
    monkeypatch.setattr(pl.LightningModule, "log", counting_log)
    HookRecorder.actions = Counter()
    cfg = make_cfg(
        "logger=csv", "metrics=none", "trainer.max_epochs=1", "trainer.log_every_n_steps=10",
        f"++trainer.limit_train_batches={BATCHES}", "data.num_images=320", "data.batch_size=16",
        "model.generator.features=8", "model.discriminator.features=8",
        "model.num_fixed_samples=16", "callbacks.progress_bar.mode=bar",
        f"++trainer.profiler._target_={__name__}.HookRecorder",
        f"+callbacks.probe._target_={__name__}.Probe",
        shrink=False,
    )  # fmt: skip
    train(cfg)
    with open(Path(cfg.paths.output_dir, "csv", "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return {"losses": losses, "logged": logged, "rows": rows, **Probe.seen}


def test_lightning_calls_only_the_batch_hooks_a_callback_implements(default_run) -> None:
    calls = {
        a: n
        for a, n in HookRecorder.actions.items()
        if a.startswith("[Callback]") and a.endswith(TRAIN_HOOKS)
    }
    implemented = {
        f"[Callback]{c.state_key}.{hook}"
        for c in default_run["callbacks"]
        for hook in TRAIN_HOOKS
        if callable(getattr(c, hook))
    }
    assert set(calls) == implemented  # no call into `Callback`'s empty hooks
    names = {a.split(".")[-1] for a in calls}
    assert names == {"on_train_batch_end"}  # nothing else runs per training batch
    assert all(n == BATCHES for a, n in calls.items()), calls
    # The progress bar, the checkpoints and the plots still run per batch.
    kinds = {type(c).__name__ for c in default_run["callbacks"] if callable(c.on_train_batch_end)}
    assert {"GANProgressBar", "RunCheckpoints", "TrainingPlots"} <= kinds


def test_the_plots_put_each_step_value_at_its_own_batch(default_run) -> None:
    # Logged after batches 10 and 20 of 20 (epoch 0.5 and 1.0), read there, not a batch later.
    losses = default_run["losses"]
    points = default_run["plots"]["train/loss_d_step"]
    assert points == [(0.5, pytest.approx(losses[9])), (1.0, pytest.approx(losses[19]))]


def test_step_values_reach_the_logs_the_bar_and_callback_metrics_without_self_log(
    default_run,
) -> None:
    assert {n for n in default_run["logged"]} == {
        "train/loss_d_epoch", "train/loss_g_epoch", "train/d_real_epoch", "train/d_fake_epoch"
    }  # fmt: skip
    assert set(default_run["logged"].values()) == {1}  # once, at the epoch's end
    steps = [(int(r["step"]), float(r["train/loss_d_step"])) for r in default_run["rows"]
             if r.get("train/loss_d_step")]  # fmt: skip
    losses = default_run["losses"]
    assert steps == [(9, pytest.approx(losses[9])), (19, pytest.approx(losses[19]))]
    assert all(r["epoch"] == "0" for r in default_run["rows"] if r.get("train/loss_d_step"))
    for where in ("bar", "callback"):
        shown = default_run[where]
        assert shown["train/loss_d_step"] == pytest.approx(losses[19]), where
        assert {"train/loss_g_step", "train/d_real_step", "train/d_fake_step"} <= shown.keys()


def test_hooks_a_class_overrides_are_kept() -> None:
    class Mine(Callback):
        def on_train_batch_end(self, *args) -> None:
            pass

    class Sub(Mine):
        pass

    mine, sub, plain = Mine(), Sub(), Callback()
    skip_unused_batch_hooks([mine, sub, plain])
    for cb in (mine, sub):
        assert callable(cb.on_train_batch_end) and cb.on_train_batch_start is None
    assert all(getattr(plain, hook) is None for hook in BATCH_HOOKS)
    assert callable(plain.on_train_epoch_end)  # once an epoch: left alone


def test_the_bar_redraws_at_most_refresh_rate_times_a_second(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    renders, real_refresh = [], rich.live.Live.refresh

    def counting_refresh(self) -> None:
        if threading.current_thread() is not threading.main_thread():  # Rich's redraw thread
            renders.append(time.perf_counter())
        real_refresh(self)

    monkeypatch.setattr(rich.live.Live, "refresh", counting_refresh)
    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE"):  # draw live, as on a terminal
        monkeypatch.setenv(name, "1")
    cfg = make_cfg(
        "logger=none", "metrics=none", "trainer.max_epochs=1", "++trainer.limit_train_batches=150",
        "data.num_images=2400", "data.batch_size=16", "model.generator.features=8",
        "model.discriminator.features=8", "callbacks.progress_bar.every_n_batches=1",
        "++trainer.enable_progress_bar=true", shrink=False,
    )  # fmt: skip
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    assert cfg.callbacks.progress_bar.refresh_rate == 2
    # 150 updates; Lightning's default rate (100 a second) redraws after nearly every one.
    assert 1 <= len(renders) <= 2 * seconds + 2, (len(renders), seconds)
