"""Multirun sweeps (basic, Optuna, submitit) and W&B runs, as real subprocesses, offline."""

from __future__ import annotations

import csv
import logging
import math
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf

from dcgan_lightning.sweep import SweepSummary, optimized_value, write_result
from dcgan_lightning.train import train
from tests.conftest import REPO

TINY = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "trainer.log_every_n_steps=1",
    "data.num_images=64",
    "data.batch_size=16",
    "model.generator.features=8",
    "model.discriminator.features=8",
    "model.num_fixed_samples=16",
    "~callbacks.progress_bar",
]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO)}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dcgan_lightning", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def wandb_records(run_file: Path) -> Iterator:
    """Records of an offline `.wandb` file (LevelDB log format of protobuf `Record`s)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, chunk = run_file.read_bytes(), 7, 32768, b""  # 7: the W&B file header
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # block trailer or zero padding
            pos += left
            continue
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def finished_records(run_file: Path, timeout: float = 60.0) -> list:
    """The records of an offline run file once W&B has written it whole (its `exit` record): the
    writer process may still be flushing when `wandb.finish()` returns in this process."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(wandb_records(run_file))
            if any(r.WhichOneof("record_type") == "exit" for r in records):
                return records
        except DecodeError:  # a record half-written
            pass
        assert time.monotonic() < deadline, f"{run_file} got no exit record in {timeout} s"
        time.sleep(0.2)


def wandb_run(job_dir: Path) -> dict:
    """The run id, group, config keys and logged history keys of a job's offline W&B run."""
    (run_file,) = job_dir.glob("wandb/offline-run-*/run-*.wandb")
    run = {"history": set(), "config": set()}
    for record in finished_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run |= {"id": record.run.run_id, "group": record.run.run_group}
            run["config"] |= {item.key for item in record.run.config.update}
            run["tags"] = list(record.run.tags)
        elif kind == "config":
            run["config"] |= {item.key for item in record.config.update}
        elif kind == "history":
            run["history"] |= {
                item.key or "/".join(item.nested_key) for item in record.history.item
            }
    return run


@pytest.mark.slow
def test_multirun_gives_each_job_its_dir_wandb_run_and_a_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_cli("-m", "model.z_dim=8,16", f"hydra.sweep.dir={sweep}", *TINY, cwd=tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    runs = [wandb_run(j) for j in jobs]
    assert runs[0]["id"] != runs[1]["id"]  # the 2nd job never logs into the 1st job's run
    assert runs[0]["group"] == runs[1]["group"] == "shapes-sweep"
    for run in runs:
        assert {"train/loss_d_step", "train/loss_g_step", "train/d_real_step"} <= run["history"]
        assert {"model", "data", "trainer"} <= run["config"]  # the resolved config, not a string
        assert "samples" in {key.split("/")[0] for key in run["history"]}
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["overrides"] for r in rows) == ["model.z_dim=16", "model.z_dim=8"]
    assert all(r["status"] == "completed" for r in rows)
    assert (sweep / "summary.md").read_text().count("\n") == 4  # header, rule, 2 rows


@pytest.mark.slow
def test_a_failed_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    overrides = ["model.z_dim=0,8", "optimized_metric=train/loss_g_epoch", "logger=csv", *TINY]
    run_cli("-m", f"hydra.sweep.dir={sweep}", *overrides, cwd=tmp_path)
    with open(sweep / "summary.csv") as f:
        rows = {r["overrides"]: r for r in csv.DictReader(f)}
    assert rows["model.z_dim=8"]["status"] == "completed"
    assert rows["model.z_dim=0"]["status"] == "failed"
    assert list(rows)[-1] == "model.z_dim=0"  # scored +inf: last
    assert float(rows["model.z_dim=8"]["objective (train/loss_g_epoch)"]) < math.inf


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials_and_reports_the_best(tmp_path: Path) -> None:
    sweep = tmp_path / "optuna"
    proc = run_cli(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        "optimized_metric=train/loss_g_epoch",
        "logger=csv",
        *TINY,
        cwd=tmp_path,
    )
    assert "Best value" in proc.stdout + proc.stderr
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_value" in results and "model.optimizer_g.lr" in results
    assert len(list(sweep.glob("*/metrics.json"))) == 2


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "submitit"
    run_cli(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "model.z_dim=8,16",
        f"hydra.sweep.dir={sweep}",
        "logger=csv",
        *TINY,
        cwd=tmp_path,
    )
    with open(sweep / "summary.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["completed", "completed"]


def test_several_loggers_at_once_and_none(make_cfg) -> None:
    cfg = make_cfg("logger=[csv,tensorboard]")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    assert (out / "csv" / "metrics.csv").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "train/loss_d_step" in (out / "csv" / "metrics.csv").read_text()
    cfg = make_cfg("logger=none")
    assert train(cfg)["train/loss_d_epoch"] > 0


def test_a_failing_wandb_warns_and_training_goes_on(make_cfg, monkeypatch, caplog) -> None:
    def broken(self, params) -> None:
        raise ConnectionError("W&B is down")

    monkeypatch.setattr(WandbLogger, "log_hyperparams", broken)
    cfg = make_cfg("logger=wandb")
    metrics = train(cfg)
    assert metrics["train/loss_d_epoch"] > 0
    assert "W&B failed to start (W&B is down)" in caplog.text
    csv_dir = Path(cfg.paths.output_dir) / "csv"  # logged locally instead: metrics and config
    with open(csv_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["train/loss_d_step"]) for r in rows if r["train/loss_d_step"]] != []
    assert OmegaConf.load(csv_dir / "hparams.yaml").model.z_dim == cfg.model.z_dim


def test_a_job_without_wandb_leaves_an_open_wandb_run_alone(make_cfg, tmp_path: Path) -> None:
    import wandb

    own = wandb.init(mode="offline", dir=str(tmp_path), project="notebook")
    try:
        train(make_cfg("logger=csv"))
        assert wandb.run is own  # still open: the job had no W&B logger
    finally:
        wandb.finish()
    assert wandb.run is None


def test_wandb_goes_offline_without_a_login(make_cfg, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = make_cfg("logger=wandb")
    train(cfg)
    run = wandb_run(Path(cfg.paths.output_dir))
    assert "train/loss_d_step" in run["history"] and run["tags"] == ["dev"]


@pytest.mark.slow
def test_multirun_of_ddp_jobs_never_lets_a_rank_start_a_sweep(tmp_path: Path) -> None:
    """Lightning's subprocess launcher (as `trainer=ddp` uses) re-runs the command line per rank."""
    sweep = tmp_path / "sweep"
    ddp = ["trainer=ddp_sim", "trainer.strategy.start_method=popen", "logger=csv"]
    proc = run_cli("-m", "model.z_dim=8,16", f"hydra.sweep.dir={sweep}", *ddp, *TINY, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert log.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2  # each job started its second rank
    with open(sweep / "summary.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["completed", "completed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no rank ran a sweep
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


def fake_sweep(sweep: Path, jobs: dict[str, dict[str, float]]) -> None:
    """Job dirs as a finished multirun leaves them: overrides and metrics.json."""
    for i, (override, metrics) in enumerate(jobs.items()):
        job = sweep / str(i)
        (job / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([override, "logger=csv"]), job / ".hydra/overrides.yaml")
        write_result(job, metrics, "completed")


def test_summary_names_the_metric_really_minimised(tmp_path: Path, caplog) -> None:
    """Without Inception weights val/swd stands in for val/fid: the table says so."""
    fake_sweep(tmp_path, {"model.z_dim=8": {"val/swd": 254.6}, "model.z_dim=16": {"val/swd": 90.0}})
    with caplog.at_level(logging.INFO, logger="dcgan_lightning.sweep"):
        SweepSummary("val/fid").on_multirun_end(
            OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
        )
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["job", "status", "objective (val/swd)"]
    assert "val/fid" not in rows[0]
    assert [(r["overrides"], float(r["objective (val/swd)"])) for r in rows] == [
        ("model.z_dim=16", 90.0),
        ("model.z_dim=8", 254.6),
    ]
    header = (tmp_path / "summary.md").read_text().splitlines()[0]
    assert "objective (val/swd)" in header and "val/fid" not in header
    assert "minimised val/swd (val/fid was not logged)" in caplog.text


def test_summary_leaves_val_fid_empty_where_it_was_not_computed(tmp_path: Path) -> None:
    fake_sweep(
        tmp_path,
        {"model.z_dim=8": {"val/fid": 40.0, "val/swd": 30.0}, "model.z_dim=16": {"val/swd": 9.0}},
    )
    SweepSummary("val/fid").on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    )
    with open(tmp_path / "summary.csv") as f:
        rows = {r["overrides"]: r for r in csv.DictReader(f)}
    objective = "objective (val/fid or val/swd)"
    assert rows["model.z_dim=8"]["val/fid"] == "40.0" and rows["model.z_dim=16"]["val/fid"] == ""
    assert rows["model.z_dim=8"][objective] == "40.0" and rows["model.z_dim=16"][objective] == "9.0"
    assert rows["model.z_dim=16"]["objective metric"] == "val/swd"


def test_a_job_says_which_metric_the_sweeper_minimises(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="dcgan_lightning.sweep"):
        assert optimized_value({"val/swd": 3.0}, "val/fid") == 3.0
    assert "minimises val/swd (val/fid was not logged)" in caplog.text
    assert optimized_value({"val/fid": 2.0, "val/swd": 3.0}, "val/fid") == 2.0
    assert optimized_value({}, "val/fid") == math.inf
