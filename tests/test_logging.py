"""What a run shows: no library noise (every project warning kept), a model summary with the real
size, images on the metrics' x-axis (batches) in W&B and TensorBoard, the progress GIF in W&B."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest
from omegaconf import open_dict

from dcgan_lightning.callbacks.progress import GANProgressBar, console_progress
from dcgan_lightning.callbacks.text_progress import TextProgress
from dcgan_lightning.train import train
from tests.test_cli import run_cli
from tests.test_sweeps import finished_records

NOISE = (
    "Tip: For seamless cloud logging",
    "litlogger",
    "The anonymous setting has no effect",
    "LeafSpec",
    "is not supported by the model summary",
    "is smaller than the logging interval",
)


@pytest.mark.slow
def test_a_run_prints_no_library_noise_but_project_warnings_and_the_model_summary(
    tmp_path: Path,
) -> None:
    result = run_cli(
        tmp_path,
        "logger=wandb",  # offline
        "trainer.precision=bf16-mixed",
        "trainer.max_epochs=1",
        "data.num_images=64",  # 4 batches, fewer than log_every_n_steps=10
        "data.batch_size=16",
        "model.generator.features=8",
        "model.discriminator.features=8",
        "metrics.fid=true",  # asked for without weights: the project's "No Inception weights"
        "metrics.download=false",  # warning
        "metrics.num_samples=32",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
        WANDB_SILENT="false",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert [n for n in NOISE if n in output] == []
    assert "No Inception weights" in output and "Tracking run with wandb" in output
    # Mixed precision keeps fp32 weights: 4 bytes a parameter is the real size.
    params = float(re.search(r"Total params: ([\d.]+) K", output).group(1)) * 1e3
    size_mb = float(re.search(r"Total estimated model params size \(MB\): ([\d.]+)", output)[1])
    assert abs(size_mb - 4 * params / 1e6) < 0.001


def history_rows(run_dir: Path) -> list[dict]:
    """Every `history` record of a run directory's offline W&B run, as {key: value}."""
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in finished_records(run_file)
        if r.WhichOneof("record_type") == "history"
    ]


def test_wandb_gets_sample_grids_at_the_batch_count_and_the_progress_gif(make_cfg) -> None:
    cfg = make_cfg("logger=wandb")  # metrics every epoch (tests.conftest.tiny)
    with open_dict(cfg):
        cfg.trainer.max_epochs = 2  # 2 batches an epoch: batch counts 2, 4; global_step 4, 8
    train(cfg)
    rows = history_rows(Path(cfg.paths.output_dir))
    keys = ("train/loss_d_step", "train/loss_d_epoch", "val/swd", "samples/_type",
            "plots/losses/_type", "samples/progress/_type")  # fmt: skip
    steps = {key: [r["trainer/global_step"] for r in rows if key in r] for key in keys}
    assert steps == {
        "train/loss_d_step": [0, 1, 2, 3],  # the batch index
        "train/loss_d_epoch": [1, 3],  # an epoch's last batch
        "val/swd": [1, 3],
        "samples/_type": [1, 3],  # with the metrics of its epoch, not at global_step 4, 8
        "plots/losses/_type": [3],
        "samples/progress/_type": [3],
    }
    (gif,) = [r for r in rows if "samples/progress/_type" in r]
    assert gif["samples/progress/_type"] == "video-file"
    assert gif["samples/progress/path"].endswith(".gif")


def test_tensorboard_images_are_at_the_batch_count(make_cfg) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg("logger=tensorboard")
    with open_dict(cfg):
        cfg.trainer.max_epochs = 2
    train(cfg)
    (events,) = Path(cfg.paths.output_dir, "tensorboard").rglob("events.out.tfevents.*")
    tb = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [e.step for e in tb.Scalars("val/swd")] == [1, 3]
    assert [e.step for e in tb.Images("samples")] == [1, 3]
    assert [e.step for e in tb.Images("plots/losses")] == [3]


@pytest.mark.parametrize(("env", "kind"), [("0", TextProgress), ("1", GANProgressBar)])
def test_the_console_gets_the_rich_bar_on_a_terminal_and_lines_otherwise(
    monkeypatch: pytest.MonkeyPatch, env: str, kind: type
) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", env)  # what Rich reads before isatty()
    assert type(console_progress()) is kind
    assert type(console_progress(mode="lines")) is TextProgress
    assert type(console_progress(mode="bar")) is GANProgressBar


EPOCH_LINE = re.compile(
    r"epoch (\d+)/2 batch (\d)/2 \| (mean|last) loss_d (\S+) loss_g (\S+) D\(x\) (\S+) "
    r"D\(G\(z\)\) (\S+) \| (\d+) img/s \| elapsed (\d+:\d\d:\d\d), ETA (\d+:\d\d:\d\d)$"
)


@pytest.mark.slow
def test_without_a_terminal_train_log_gets_epochs_evaluations_and_a_summary(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")  # stdout is not a terminal (as under nohup)
    progress = make_cfg(shrink=False).callbacks.progress_bar  # the default config's
    cfg = make_cfg("logger=csv")  # 2 batches an epoch, each logged; an evaluation every epoch
    run = Path(cfg.paths.output_dir)
    with open_dict(cfg):
        cfg.trainer.max_epochs = 3
        cfg.trainer.enable_progress_bar = True
        cfg.callbacks.progress_bar = progress
        cfg.callbacks.progress_bar.every_n_minutes = 0  # also a line at each logged batch
    run.mkdir(parents=True)
    handler = logging.FileHandler(run / "train.log")  # where Hydra's job logging writes
    root = logging.getLogger()
    old_level, root.level = root.level, logging.INFO
    root.addHandler(handler)
    try:
        train(cfg)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    lines = (run / "train.log").read_text().splitlines()
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))

    epochs = [m.groups() for line in lines if (m := EPOCH_LINE.search(line))]
    assert [(e, b, kind) for e, b, kind, *_ in epochs] == [
        (str(e), b, kind) for e in range(3) for b, kind in (("1", "last"), ("2", "mean"))
    ]
    means = [r for r in rows if r.get("train/loss_d_epoch")]
    for (*_, loss_d, loss_g, d_x, d_gz, speed, _, _), row in zip(epochs[1::2], means):
        for shown, key in ((loss_d, "loss_d"), (loss_g, "loss_g"), (d_x, "d_real"),
                           (d_gz, "d_fake")):  # fmt: skip
            assert float(shown) == pytest.approx(float(row[f"train/{key}_epoch"]), rel=1e-3)
        assert int(speed) > 0
    steps = [r for r in rows if r.get("train/loss_d_step")][0::2]  # batch 1 of each epoch
    for (*_, loss_d, _, _, _, _, _, _), row in zip(epochs[0::2], steps):
        assert float(loss_d) == pytest.approx(float(row["train/loss_d_step"]), rel=1e-3)
    assert epochs[-1][-1] == "0:00:00"  # ETA at the last batch

    evals = [line for line in lines if "evaluation at epoch" in line]
    swd = [float(r["val/swd"]) for r in rows if r.get("val/swd")]
    assert len(evals) == 3 == len(swd)
    for epoch, (line, value) in enumerate(zip(evals, swd)):
        assert f"evaluation at epoch {epoch} |" in line
        assert float(re.search(r"val/swd (\S+)", line)[1]) == pytest.approx(value, rel=1e-3)
    # Each evaluation follows its epoch's line.
    assert (
        lines.index(evals[1])
        == next(i for i, line in enumerate(lines) if "epoch 1/2 batch 2/2" in line) + 1
    )

    summary = "\n".join(lines[next(i for i, x in enumerate(lines) if "Run summary" in x) :])
    assert re.search(r"Run summary: epoch 2/2 done, 6 batches in \d+:\d\d:\d\d this session, "
                     r"[1-9]\d* img/s while training", summary)  # fmt: skip
    best = min(range(3), key=lambda e: swd[e])
    assert (
        f"best: val/swd {swd[best]:.4g} at epoch {best} (checkpoints/best_epoch_{best:04d}.ckpt)"
        in summary
    )
    assert (run / "checkpoints" / f"best_epoch_{best:04d}.ckpt").is_file()
    assert f"val/swd {swd[-1]:.4g}" in summary.split("final:")[1]
    assert f"files: {run.resolve()}: " in summary and "checkpoints/" in summary
