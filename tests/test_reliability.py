"""Crash safety, exact resume, clear errors: kills, signals, NaNs, full disk, bad input."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

import dcgan_lightning.models.gan_module as gan_module
from dcgan_lightning import run_guard
from dcgan_lightning.checkpoint_io import AtomicCheckpointIO, InsufficientDiskSpaceError
from dcgan_lightning.compose import CONF_DIR
from dcgan_lightning.divergence import DivergedError
from dcgan_lightning.errors import UserError
from dcgan_lightning.resume import hydra_subdir, resolve_ckpt_path, run_dir
from dcgan_lightning.train import train
from tests.conftest import REPO, compose_config, tiny

# Everything that draws from the global RNGs (shuffle, DiffAugment, dropout, flips) is switched on,
# so an exact resume proves those states are restored. fp32: bf16 autocast is exact too, but fp32
# keeps the comparison independent of the CPU's bf16 kernels.
EXACT = [
    "logger=none",
    "trainer.precision=32-true",
    "model.diffaugment=[color,translation,cutout]",
    "model.discriminator.dropout=0.3",
    "data.flip=true",
    "model.ema={decay: 0.9, start_step: 0}",
]


def run_cfg(out: Path, *overrides: str, epochs: int = 1, batches: int = 2) -> DictConfig:
    """The real config, tiny, writing to `out`, with only the callbacks that save checkpoints."""
    cfg = tiny(compose_config([*EXACT, *overrides], out))
    with open_dict(cfg):
        cfg.trainer.max_epochs = epochs
        cfg.trainer.limit_train_batches = batches
        cfg.callbacks = {k: cfg.callbacks[k] for k in ("model_checkpoint", "save_on_interrupt")}
        cfg.callbacks.model_checkpoint.every_n_epochs = 1
    return cfg


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run directory (tests copy it before writing into it)."""
    out = tmp_path_factory.mktemp("one_epoch") / "run"
    train(run_cfg(out))
    return out


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run, uninterrupted for 2 epochs."""
    out = tmp_path_factory.mktemp("two_epochs") / "run"
    train(run_cfg(out, epochs=2))
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


# -- exact resume ---------------------------------------------------------------------------------
def test_resumed_run_ends_where_an_uninterrupted_one_does(
    one_epoch_run: Path, two_epoch_run: Path, tmp_path: Path
) -> None:
    run = copy_run(one_epoch_run, tmp_path)
    train(run_cfg(run, "ckpt_path=last", epochs=2))
    assert (run / "config.yaml").read_bytes() == (one_epoch_run / "config.yaml").read_bytes()
    assert OmegaConf.load(run / "config_resume_1.yaml").ckpt_path == "last"

    a = load(two_epoch_run / "checkpoints" / "last.ckpt")
    b = load(run / "checkpoints" / "last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 8)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any(k.startswith("ema_generator.") for k in a["state_dict"])
    for key, value in a["state_dict"].items():  # G, D, EMA, BatchNorm statistics, fixed noise
        assert torch.equal(value, b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        for i, state in opt_a["state"].items():
            assert state["step"] == opt_b["state"][i]["step"]
            assert torch.equal(state["exp_avg_sq"], opt_b["state"][i]["exp_avg_sq"])


def test_resume_without_saved_rng_states_is_not_exact(
    one_epoch_run: Path, two_epoch_run: Path, tmp_path: Path
) -> None:
    """The control for the test above: the RNG states are what makes it exact."""
    run = copy_run(one_epoch_run, tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    stripped = load(ckpt)
    del stripped["rng_states"]
    torch.save(stripped, ckpt)
    train(run_cfg(run, "ckpt_path=last", epochs=2))
    a = load(two_epoch_run / "checkpoints" / "last.ckpt")["state_dict"]
    b = load(ckpt)["state_dict"]
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_resume_applies_new_optimizer_and_training_settings_and_logs_each(
    one_epoch_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    """Lightning restores the optimizers' param_groups (lr, betas) from the checkpoint: the
    command line's must win, and every changed setting is named in the log."""
    run = copy_run(one_epoch_run, tmp_path)
    stepped: list[tuple[float, tuple[float, float]]] = []
    original = gan_module.GAN.on_before_optimizer_step

    def record(self, optimizer) -> None:
        group = optimizer.param_groups[0]
        stepped.append((group["lr"], tuple(group["betas"])))
        original(self, optimizer)

    monkeypatch.setattr(gan_module.GAN, "on_before_optimizer_step", record)
    changes = ["model.optimizer_g.lr=1e-5", "model.optimizer_d.betas=[0.0,0.99]"]
    changes += ["model.loss=hinge", "model.d_steps_per_g_step=2"]
    with caplog.at_level("INFO", logger="dcgan_lightning.models.resume_settings"):
        train(run_cfg(run, "ckpt_path=last", *changes, epochs=2))
    # Epoch 2: 2 batches, so 2 D steps and 1 G step, all with the new settings.
    assert sorted(set(stepped)) == [(1e-5, (0.5, 0.999)), (2e-4, (0.0, 0.99))]
    assert len(stepped) == 3
    groups = [
        s["param_groups"][0] for s in load(run / "checkpoints" / "last.ckpt")["optimizer_states"]
    ]
    assert (groups[0]["lr"], groups[1]["betas"]) == (1e-5, (0.0, 0.99))
    text = caplog.text
    assert "optimizer_g lr 0.0002 -> 1e-05" in text
    assert "optimizer_d betas (0.5, 0.999) -> (0.0, 0.99)" in text
    assert "model.loss 'bce' -> 'hinge'" in text and "model.d_steps_per_g_step 1 -> 2" in text
    assert "optimizer_d lr" not in text and "model.diffaugment" not in text  # unchanged


def test_load_from_checkpoint_leaves_the_callers_random_state(one_epoch_run: Path) -> None:
    """The checkpoint's RNG states are for a resumed fit, not for a notebook loading weights:
    after loading, the caller's streams are where building the same model leaves them."""
    path = one_epoch_run / "checkpoints" / "last.ckpt"
    ckpt = load(path)
    assert "rng_states" in ckpt

    def states() -> tuple:
        return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()

    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    gan_module.GAN(**ckpt["hyper_parameters"], optimizer_g=None, optimizer_d=None)
    built = states()  # the weights' init draws from torch's stream
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    gan_module.GAN.load_from_checkpoint(path, optimizer_g=None, optimizer_d=None)
    loaded = states()
    assert loaded[:2] == built[:2]
    assert torch.equal(loaded[2], built[2])


def test_ckpt_path_last_continues_in_the_checkpoints_run_dir(tmp_path: Path) -> None:
    runs = tmp_path / "outputs" / "shapes" / "runs"
    fresh = str(runs / "2030-01-01_00-00-00")
    assert run_dir(None, fresh) == fresh
    assert run_dir("last", fresh) == fresh  # nothing to resume: a fresh dir, train() says why
    for name in ("old", "new"):
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / "checkpoints" / "last.ckpt").write_bytes(b"x")
        time.sleep(0.01)
    assert run_dir("last", fresh) == str(runs / "new")
    assert run_dir(str(runs / "old" / "checkpoints" / "last.ckpt"), fresh) == str(runs / "old")
    (tmp_path / "loose.ckpt").write_bytes(b"x")
    assert run_dir(str(tmp_path / "loose.ckpt"), fresh) == fresh
    # In its own run dir, "last" is that dir's checkpoint even when another run is newer.
    assert resolve_ckpt_path("last", runs / "old") == str(runs / "old/checkpoints/last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: no checkpoints/last\.ckpt under"):
        resolve_ckpt_path("last", tmp_path / "elsewhere" / "runs" / "x")
    with pytest.raises(UserError, match=r"is a directory; pass a checkpoint file, e\.g\. .*last"):
        resolve_ckpt_path(str(runs / "old"), runs / "new")


def test_a_resume_keeps_the_first_runs_hydra_files(tmp_path: Path) -> None:
    """Hydra writes `.hydra/` before the task runs: a resume (the run dir has checkpoints/) writes
    its own into `.hydra/resume_<time>/`, so the first run's overrides stay its record."""
    assert hydra_subdir(str(tmp_path), "2030-01-01_00-00-00") == ".hydra"
    (tmp_path / "checkpoints").mkdir()
    assert hydra_subdir(str(tmp_path), "2030-01-01_00-00-00") == ".hydra/resume_2030-01-01_00-00-00"


def guard_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> Path:
    """`RunGuard.on_run_start` as Hydra calls it for `python -m dcgan_lightning *overrides` in
    `tmp_path`; the run dir it noted."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    run_guard.RunGuard().on_run_start(cfg)
    return Path(cfg.hydra.run.dir).absolute()


def test_a_failed_start_leaves_no_run_dir_and_a_failed_resume_no_changed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new run: Hydra creates outputs/shapes/runs/<time>/ with .hydra/ and train.log; all go.
    new = guard_run(tmp_path, monkeypatch)
    assert new.parent.parent.parent == tmp_path / "outputs" and not new.exists()
    (new / ".hydra").mkdir(parents=True)
    (new / ".hydra" / "overrides.yaml").write_text("[]")
    (new / "train.log").write_text("an error\n")
    run_guard.undo()
    assert list(tmp_path.iterdir()) == []  # outputs/ too: it did not exist before

    # A resume: its run's files come back as they were; what Hydra added goes.
    run = tmp_path / "outputs" / "shapes" / "runs" / "first"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- model.loss=hinge\n")
    (run / "train.log").write_text("epoch 0\n")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert guard_run(tmp_path, monkeypatch, f"ckpt_path={run}/checkpoints/last.ckpt") == run
    (run / ".hydra" / "overrides.yaml").write_text("- ckpt_path=last\n")  # as Hydra 1.3 did
    (run / ".hydra" / "resume_x").mkdir()
    (run / ".hydra" / "resume_x" / "overrides.yaml").write_text("[]")
    with open(run / "train.log", "a") as log:
        log.write("[ERROR] - does not fit\n")
    run_guard.undo()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert not (run / ".hydra" / "resume_x").exists()


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------------
class SendSignal(pl.Callback):
    """Sends `signum` to this process `times` times after batch `at_batch` of the first epoch."""

    def __init__(self, signum: int, at_batch: int, times: int = 1) -> None:
        self.signum, self.at_batch, self.times = signum, at_batch, times

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 0 and batch_idx == self.at_batch:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)
                time.sleep(0.01)  # let the handler run before the next one


TRAINED: list[tuple[int, int]] = []  # (epoch, batch_idx) of every batch BatchLog saw trained


class BatchLog(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        TRAINED.append((trainer.current_epoch, batch_idx))


def with_signal(cfg: DictConfig, **kwargs: int) -> DictConfig:
    with open_dict(cfg):
        cfg.callbacks.signal = {"_target_": "tests.test_reliability.SendSignal", **kwargs}
    return cfg


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_at_the_batch_boundary_and_exits(tmp_path: Path, signum: int) -> None:
    before = signal.getsignal(signal.SIGINT)
    cfg = with_signal(
        run_cfg(tmp_path / "run", epochs=2, batches=3), signum=int(signum), at_batch=1
    )
    TRAINED.clear()
    with open_dict(cfg):
        cfg.callbacks.batch_log = {"_target_": "tests.test_reliability.BatchLog"}
    with pytest.raises(SystemExit) as exit_:
        train(cfg)
    assert exit_.value.code == 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    ckpt = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 4  # batches 0 and 1, each D + G
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 2

    with open_dict(cfg):
        del cfg.callbacks.signal
        cfg.ckpt_path = "last"
    train(cfg)  # the rest of epoch 0, then epoch 1
    done = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert (done["epoch"], done["global_step"]) == (1, 12)
    # Every batch position trained once: none skipped, none run twice. (Which images the rest of
    # epoch 0 draws is another matter: a fresh shuffle, see README "Reliability".)
    assert TRAINED == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path: Path) -> None:
    cfg = with_signal(
        run_cfg(tmp_path / "run", batches=3), signum=signal.SIGINT, at_batch=0, times=2
    )
    with pytest.raises(SystemExit) as exit_:
        train(cfg)
    assert exit_.value.code == 1  # Lightning's own KeyboardInterrupt shutdown
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


# -- divergence -----------------------------------------------------------------------------------
def nan_after(calls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the discriminator loss NaN from its `calls`-th call on."""
    real, count = gan_module.discriminator_loss, [0]

    def loss(*args, **kwargs):
        count[0] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if count[0] > calls else value

    monkeypatch.setattr(gan_module, "discriminator_loss", loss)


def test_nonfinite_loss_stops_naming_step_and_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_after(2, monkeypatch)  # epoch 0 (2 batches) is fine, epoch 1 batch 0 is not
    cfg = run_cfg(tmp_path / "run", epochs=2)
    last = (tmp_path / "run" / "checkpoints" / "last.ckpt").resolve()
    with pytest.raises(DivergedError) as err:
        train(cfg)
    assert str(err.value).startswith(
        f"Non-finite loss_d (NaN or inf) at global step 4 (detected at epoch 1): training stopped. "
        f"Last good checkpoint: {last}; resume with ckpt_path={last}"
    )
    kept = load(last)
    assert kept["epoch"] == 0 and kept["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())


def test_nonfinite_loss_from_a_huge_learning_rate_stops_the_run(tmp_path: Path) -> None:
    cfg = run_cfg(tmp_path / "run", "model.optimizer_d.lr=1e30", "model.optimizer_g.lr=1e30")
    stopped = r"Non-finite loss_. \(NaN or inf\) at global step \d+ .*No checkpoint was written"
    with pytest.raises(DivergedError, match=stopped):
        train(cfg)


def test_skip_mode_skips_nonfinite_updates_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_after(0, monkeypatch)  # every D loss is NaN
    cfg = run_cfg(tmp_path / "run", "model.on_nonfinite=skip")
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=dm.image_size, channels=dm.channels)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = instantiate(cfg.trainer, callbacks=[], logger=False)
    with pytest.warns(UserWarning, match=r"Non-finite loss_d \(nan\) at global step 0 .*skipped"):
        trainer.fit(model, datamodule=dm)
    after = dict(model.named_parameters())
    assert all(torch.isfinite(p).all() for p in after.values())
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("discriminator."))
    assert not all(torch.equal(before[n], after[n]) for n in before if n.startswith("generator."))
    assert trainer.global_step == 2  # the two G steps; the D steps were skipped
    logged = trainer.callback_metrics  # the skipped steps are left out of the epoch means
    assert torch.isnan(logged["train/loss_d_step"]) and torch.isnan(logged["train/loss_d_epoch"])
    assert torch.isfinite(logged["train/loss_g_epoch"]) and torch.isfinite(
        logged["train/d_real_epoch"]
    )


# -- checkpoint writes ----------------------------------------------------------------------------
Usage = namedtuple("Usage", "total used free")


def test_full_disk_fails_the_save_loudly_and_keeps_the_old_checkpoint(
    one_epoch_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(one_epoch_run, tmp_path)
    before = snapshot(run / "checkpoints")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 4096, 4096))
    full = r"Not enough disk space to save checkpoint .*epoch_0001\.ckpt: it needs [\d.]+ MiB, "
    full += r"0\.0 MiB is free on .*\. The previous checkpoint is kept"
    with pytest.raises(InsufficientDiskSpaceError, match=full):
        train(run_cfg(run, "ckpt_path=last", epochs=2))
    assert snapshot(run / "checkpoints") == before  # nothing new, nothing torn, no temp files
    load(run / "checkpoints" / "last.ckpt")


def test_a_write_killed_midway_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, path)

    def die(fd: int) -> None:
        raise KeyboardInterrupt  # as if the process ended between write and rename

    monkeypatch.setattr(os, "fsync", die)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, path)
    assert load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_unwritable_output_dir_fails_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the output directory should go")
    cfg = run_cfg(blocker / "run")
    with pytest.raises(PermissionError, match=r"Output directory .*not_a_dir/run is not writable"):
        train(cfg)
    assert blocker.read_text().startswith("a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_fails_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="is not writable"):
            train(run_cfg(out))
    finally:
        out.chmod(0o700)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.channels=1", "channels: 3 in the checkpoint, 1 here"),
        ("data.image_size=64", "image_size: 32 in the checkpoint, 64 here"),
        ("model.z_dim=16", "z_dim: 100 in the checkpoint, 16 here"),
        ("model.ema=null", "ema_generator.n_averaged: in the checkpoint, not in this model"),
    ],
)
def test_incompatible_checkpoint_is_refused_before_touching_the_run(
    one_epoch_run: Path, tmp_path: Path, override: str, message: str
) -> None:
    run = copy_run(one_epoch_run, tmp_path)
    before = snapshot(run)
    cfg = run_cfg(run, "ckpt_path=last")
    with open_dict(cfg):
        key, value = override.split("=")
        cfg.merge_with_dotlist([f"{key}={value}"])
    with pytest.raises(ValueError, match=f"does not fit the model of this run:\n(.|\n)*{message}"):
        train(cfg)
    assert snapshot(run) == before  # config.yaml, checkpoints, logs: all as they were


def test_truncated_checkpoint_is_refused(one_epoch_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "half.ckpt"
    data = (one_epoch_run / "checkpoints" / "last.ckpt").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"Cannot read checkpoint .*half.ckpt .*truncated"):
        train(run_cfg(tmp_path / "run", f"ckpt_path={bad}"))


def test_unknown_config_key_and_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'model\.bogus'"):
        compose_config(["model.bogus=1"], tmp_path)
    bad = r"on_nonfinite must be one of \('stop', 'skip'\), got 'explode'"
    with pytest.raises((ValueError, InstantiationException), match=bad):
        train(run_cfg(tmp_path / "run", "model.on_nonfinite=explode"))


# -- the real command line: Ctrl-C, SIGKILL while writing checkpoints, resume ---------------------
CLI = [
    "logger=none",
    "metrics=none",
    "data.num_images=64",
    "data.batch_size=16",
    "+trainer.limit_train_batches=2",
    "+trainer.enable_progress_bar=false",
    "callbacks.model_checkpoint.every_n_epochs=1",
    "~callbacks.sample_grid",
    "~callbacks.progress_bar",
    "model.generator.features=32",  # checkpoints of ~20 MB: their writes take long enough to hit
    "model.discriminator.features=32",
]


def start(cwd: Path, *overrides: str, cli: list[str] = CLI) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "dcgan_lightning", *cli, *overrides],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"condition not met; output:\n{proc.communicate()[0]}")
        time.sleep(0.002)


@pytest.mark.slow
def test_cli_ctrl_c_then_sigkill_while_saving_then_resume(tmp_path: Path) -> None:
    runs = tmp_path / "outputs" / "shapes" / "runs"

    # 1. Ctrl-C: the batch finishes, last.ckpt is saved, the exit code says SIGINT.
    proc = start(tmp_path, "trainer.max_epochs=1000")
    wait_for(lambda: list(runs.glob("*/checkpoints/epoch_0001.ckpt")), proc)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "Interrupted by SIGINT" in output and "Resume with:" in output
    (run,) = runs.iterdir()
    last = run / "checkpoints" / "last.ckpt"
    assert load(last)["global_step"] >= 8

    # 2. Resume, then SIGKILL while last.ckpt is being rewritten (its temp file exists).
    proc = start(tmp_path, "trainer.max_epochs=1000", "ckpt_path=last")
    wait_for(lambda: list((run / "checkpoints").glob(".last.ckpt.*.tmp")), proc)
    proc.kill()
    proc.communicate()
    assert list(runs.iterdir()) == [run]  # the resumed run wrote into the same run directory
    for path in (run / "checkpoints").glob("*.ckpt"):
        load(path)  # every checkpoint on disk is whole; a torn write is only ever a .tmp file
    resumed_from = load(last)
    assert resumed_from["global_step"] >= 8

    # 3. Resume again to a fixed length: training continues from the last checkpoint.
    epochs = resumed_from["epoch"] + 3
    proc = start(tmp_path, f"trainer.max_epochs={epochs}", "ckpt_path=last")
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output
    assert f"Restoring states from the checkpoint path at {last.resolve()}" in output
    final = load(last)
    assert final["epoch"] == epochs - 1 and final["global_step"] == epochs * 4
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the killed write's leftovers are gone
