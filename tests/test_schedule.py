"""When a run evaluates: every_n_kimg, eval_every_n_epochs, the automatic share, and always at the
end of the run (metrics/schedule.py)."""

from __future__ import annotations

import csv
import math
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from dcgan_lightning.metrics.schedule import EvaluationSchedule
from dcgan_lightning.train import train


def logged_batches(out: Path, key: str = "val/swd") -> list[int]:
    """The csv logger's steps (batch counts - 1) of the rows that carry `key`."""
    with open(out / "csv" / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get(key)]


def test_a_run_not_ending_on_the_schedule_still_evaluates_its_last_batch(make_cfg) -> None:
    """trainer.max_epochs=3 with evaluations every 5 epochs: once, at the end (issue 29.2)."""
    cfg = make_cfg("logger=csv")
    with open_dict(cfg):
        cfg.trainer.max_epochs = 3  # 2 batches an epoch (tests.conftest.tiny)
        cfg.metrics.eval_every_n_epochs = 5
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert logged_batches(out) == [5]  # the 6th and last batch
    assert math.isfinite(metrics["val/swd"])
    assert [p.name for p in (out / "checkpoints").glob("best_*")] == ["best_epoch_0002.ckpt"]


def test_an_epoch_schedule_also_evaluates_the_last_epoch(make_cfg) -> None:
    cfg = make_cfg("logger=csv")
    with open_dict(cfg):
        cfg.trainer.max_epochs = 3
        cfg.metrics.eval_every_n_epochs = 2
    train(cfg)
    assert logged_batches(Path(cfg.paths.output_dir)) == [3, 5]  # epoch 2, then the end


def test_every_n_kimg_counts_images_of_all_ranks_and_ends_with_an_evaluation(make_cfg) -> None:
    cfg = make_cfg("logger=csv")  # batches of 16 images
    with open_dict(cfg):
        cfg.trainer.max_epochs = 3
        cfg.metrics.every_n_kimg = 0.04  # crossed after 48 and 80 images: batches 3 and 5
        cfg.metrics.eval_every_n_epochs = None
    train(cfg)
    assert logged_batches(Path(cfg.paths.output_dir)) == [2, 4, 5]


def test_kimg_schedule_crossings() -> None:
    schedule = EvaluationSchedule(images_per_batch=64, every_n_kimg=0.5)  # ranks x batch
    due = [b for b in range(1, 40) if schedule.due(b, last=False)]
    assert due == [8, 16, 24, 32]  # 512, 1024, 1536, 2048 images cross 500, 1000, ...
    assert schedule.due(3, last=True)
    assert EvaluationSchedule(64, every_n_kimg=0.05).due(1, last=False)  # 64 images > 50


def test_automatic_schedule_keeps_the_share_and_reserves_the_final_evaluation() -> None:
    """Simulated clock: 1 s a batch, 30 s an evaluation, 10%: whatever the run length, the
    evaluations (the final one included) stay within 10% once past the first."""
    for total in (300, 3000, 30000):
        schedule = EvaluationSchedule(images_per_batch=32, max_share=0.1)
        schedule.start(total)
        assert schedule.next_batch == math.ceil(total / 10)
        wall = 0.0
        for batch in range(1, total + 1):
            wall += 1.0
            last = batch == total
            if schedule.due(batch, last):
                wall += 30.0
                schedule.record(batch, 30.0)
                if not last:
                    schedule.next_batch = schedule.plan(batch, 30.0, wall)
        share = schedule.eval_seconds / wall
        assert schedule.evaluations[-1] == total
        if total >= 3000:  # long enough for the budget to absorb the first, unplanned one
            assert share <= 0.1 + 1e-9, (total, share, schedule.evaluations)
        assert len(schedule.evaluations) >= (2 if total >= 3000 else 1)
    line = schedule.summary(wall)
    assert f"({100 * share:.1f}%)" in line and f"{len(schedule.evaluations)} evaluations" in line


def test_schedule_state_survives_a_resume() -> None:
    schedule = EvaluationSchedule(32)
    schedule.start(1000)
    schedule.record(100, 12.0)
    schedule.next_batch = 400
    resumed = EvaluationSchedule(32)
    resumed.load_state_dict(schedule.state_dict(wall_seconds=150.0))
    resumed.start(1000)  # a resumed run keeps its plan
    assert (resumed.next_batch, resumed.evaluations, resumed.eval_seconds) == (400, [100], 12.0)
    assert resumed.wall_offset == 150.0


BAD = [{"every_n_kimg": 0}, {"every_n_epochs": 0}, {"max_share": 1.0}]


@pytest.mark.parametrize("keys", [*BAD, {"every_n_kimg": 1, "every_n_epochs": 1}])
def test_bad_schedules_are_refused(keys: dict) -> None:
    with pytest.raises(ValueError, match="metrics"):
        EvaluationSchedule(32, **keys)


@pytest.mark.parametrize("asked", [True, False])
def test_an_interrupted_run_evaluates_its_last_batch_when_asked(make_cfg, asked: bool) -> None:
    cfg = make_cfg("logger=csv")
    with open_dict(cfg):
        cfg.trainer.max_epochs = 2
        cfg.metrics.eval_every_n_epochs = 5
        cfg.metrics.eval_on_interrupt = asked
        signal_first = {  # before the metrics' hook sees the batch end, as a real signal is
            "_target_": "tests.test_reliability.SendSignal",
            "signum": int(signal.SIGTERM),
            "at_batch": 0,
        }
        cfg.callbacks = {"signal": signal_first, **cfg.callbacks}
    with pytest.raises(SystemExit) as exit_:
        train(cfg)
    assert exit_.value.code == 128 + signal.SIGTERM
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    best = list(checkpoints.glob("best_*"))
    assert len(best) == (1 if asked else 0)
    if asked:
        saved = torch.load(best[0], weights_only=True)
        assert saved["global_step"] == 2  # after the first batch: its D and G steps


@pytest.mark.slow
def test_the_automatic_schedule_keeps_ranks_together_under_ddp(make_cfg) -> None:
    """Rank 0's plan, broadcast: both ranks validate after the same batches (else they hang)."""
    from tests.conftest import fast_ranks

    cfg = make_cfg("logger=csv", "trainer=ddp_sim", fast_ranks())
    with open_dict(cfg):
        cfg.trainer.max_epochs = 3
        cfg.metrics.eval_every_n_epochs = None  # automatic: the first after 10% of 6 batches
    metrics = train(cfg)
    assert math.isfinite(metrics["val/swd"])
    batches = logged_batches(Path(cfg.paths.output_dir))
    assert batches[0] == 0 and batches[-1] == 5  # the first batch, and the last
