"""Training visuals: the progress GIF, the D(x)/D(G(z)), loss and metric plots, their logging."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dcgan_lightning.callbacks.plots import TrainingPlots
from dcgan_lightning.train import train


def assert_image(path: Path, frames: int = 1) -> Image.Image:
    assert path.is_file(), path
    with Image.open(path) as image:
        image.verify()
    image = Image.open(path)
    assert getattr(image, "n_frames", 1) == frames and min(image.size) > 50
    return image


def test_a_run_leaves_gif_and_plots_and_logs_the_plots(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "logger=tensorboard", "metrics.fid=false", "metrics.kid=false", "metrics.num_samples=32"
    )
    cfg.trainer.max_epochs = 2  # after make_cfg's shrinking to 1
    train(cfg)
    out = Path(cfg.paths.output_dir)
    assert_image(out / "samples" / "progress.gif", frames=2)
    for name in ("discriminator", "losses", "metrics"):
        assert_image(out / "plots" / f"{name}.png")

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["images"])
    assert {"plots/discriminator", "plots/losses", "plots/metrics", "samples"} <= tags
    assert "plots/nearest" in tags  # at every evaluation
    assert_image(out / "plots" / "nearest.png")


def test_plots_record_the_logged_curves_and_survive_a_checkpoint(tmp_path: Path) -> None:
    plots = TrainingPlots(str(tmp_path))
    for epoch in range(3):
        for step in range(4):
            x = epoch + (step + 1) / 4
            plots.history["train/d_real_step"].append((x, 0.8 - 0.05 * epoch))
            plots.history["train/d_fake_step"].append((x, 0.2 + 0.05 * epoch))
            plots.history["train/loss_d_step"].append((x, 1.0))
        plots.history["train/d_real_epoch"].append((epoch + 1, 0.8 - 0.05 * epoch))
        for key, value in (("val/kid", 0.1), ("val/kid_std", 0.01), ("val/swd", 50.0)):
            plots.history[key].append((epoch + 1, value / (epoch + 1)))
        for key in ("val/precision", "val/recall", "val/density", "val/coverage", "val/nn_ratio"):
            plots.history[key].append((epoch + 1, 0.5 + 0.1 * epoch))
        plots.history["val/swd_16px"].append((epoch + 1, 40.0))
    paths = plots.draw()
    assert sorted(p.name for p in paths) == ["discriminator.png", "losses.png", "metrics.png"]
    wide = assert_image(tmp_path / "metrics.png")
    # One row of panels: kid, nn_ratio, precision/recall/density/coverage together, swd.
    assert wide.size == (1600, 350)

    torch.save(plots.state_dict(), tmp_path / "state.pt")  # as in a checkpoint
    restored = TrainingPlots(str(tmp_path / "again"))
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.history == plots.history


def test_no_metric_plot_without_metrics(make_cfg) -> None:
    cfg = make_cfg("logger=csv", "metrics=none")
    train(cfg)
    plots = Path(cfg.paths.output_dir) / "plots"
    assert (plots / "discriminator.png").is_file() and (plots / "losses.png").is_file()
    assert not (plots / "metrics.png").exists()
