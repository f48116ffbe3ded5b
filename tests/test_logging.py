"""What a run shows: no library noise (every project warning kept), a model summary with the real
size, images on the metrics' x-axis (batches) in W&B and TensorBoard, the progress GIF in W&B."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import open_dict

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
        "metrics.download=false",  # the project's "No Inception weights" warning
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
