"""Training visuals: the progress GIF, the D(x)/D(G(z)), loss and metric plots, their logging."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
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


def drawn_figures(plots: TrainingPlots, monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """The figures `plots.draw()` saves, by file stem."""
    figures: dict[str, Figure] = {}
    save = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda fig, path, **kw: figures.update({Path(path).stem: fig})
    )
    plots.draw()
    monkeypatch.setattr(Figure, "savefig", save)
    return figures


def discriminator_history(plots: TrainingPlots, real: float, fake: float) -> None:
    for step in range(8):
        plots.history["train/d_real_step"].append(((step + 1) / 4, real + 0.01 * step))
        plots.history["train/d_fake_step"].append(((step + 1) / 4, fake - 0.01 * step))


@pytest.mark.parametrize(
    ("loss", "real", "fake", "lines"),
    [
        ("bce", 0.8, 0.2, {0.5}),
        ("hinge", 1.3, -0.42, {1.0, 0.0, -1.0}),
        ("lsgan", 1.1, -0.3, {1.0, 0.0}),
    ],
)
def test_discriminator_plot_axes_and_reference_lines_follow_the_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loss: str, real: float, fake: float, lines: set
) -> None:
    """Hinge and LSGAN log raw scores: not clipped to [0, 1], no 0.5 chance line (issue 29.5)."""
    plots = TrainingPlots(str(tmp_path))
    plots.loss = loss  # set from the model's hparams at setup
    discriminator_history(plots, real, fake)
    ax = drawn_figures(plots, monkeypatch)["discriminator"].axes[0]
    low, high = ax.get_ylim()
    assert low <= fake - 0.07 and high >= real + 0.07  # every value in view
    horizontal = {
        float(line.get_ydata()[0]) for line in ax.get_lines() if len(set(line.get_ydata())) == 1
    }
    assert horizontal == lines


def test_conditional_metrics_get_one_panel_per_metric_for_the_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """val/<metric>/<class> in one panel per metric with its class mean; val/swd's panel keeps
    val/swd and its pyramid levels only (issue 29.10)."""
    plots = TrainingPlots(str(tmp_path))
    classes = [f"artist{i}" for i in range(50)]
    for epoch in (1, 2):
        plots.history["val/swd"].append((epoch, 50.0 / epoch))
        plots.history["val/swd_16px"].append((epoch, 40.0 / epoch))
        plots.history["val/r_v"].append((epoch, 0.2 * epoch))
        for metric in ("swd", "fid"):
            plots.history[f"val/{metric}_class_mean"].append((epoch, 80.0 / epoch))
            for i, name in enumerate(classes):
                plots.history[f"val/{metric}/{name}"].append((epoch, 60.0 + i))
    fig = drawn_figures(plots, monkeypatch)["metrics"]
    panels = {ax.get_title(): ax for ax in fig.axes if ax.axison}
    assert len(panels) == 4, sorted(panels)  # r_v, swd, and swd and fid per class
    swd = next(ax for title, ax in panels.items() if title == "val/swd")
    assert sorted(line.get_label() for line in swd.get_lines()) == ["val/swd", "val/swd_16px"]
    for metric in ("swd", "fid"):
        (ax,) = [ax for title, ax in panels.items() if f"val/{metric}/" in title]
        assert len(ax.get_lines()) == len(classes) + 1  # the classes and their mean


def test_nearest_plot_draws_samples_of_every_class(tmp_path: Path) -> None:
    """A conditional model's fixed samples are a row per class: nearest.png's 16 must not all
    be the first row's class (issue 29.9)."""
    from types import SimpleNamespace

    from dcgan_lightning.callbacks.quality import QualityMetrics

    drawn: list[torch.Tensor] = []

    def generate(z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        drawn.append(labels)
        return torch.zeros(len(z), 3, 8, 8)

    module = SimpleNamespace(
        fixed_noise=torch.randn(48, 4),
        fixed_labels=torch.arange(3).repeat_interleave(16),  # 3 rows of 16, as the grid has
        generate=generate,
    )
    metrics = QualityMetrics(fid=False, kid=False, prdc=False, plots_dir=str(tmp_path))
    metrics._draw_nearest(SimpleNamespace(is_global_zero=False), module)  # stops before drawing
    (labels,) = drawn
    assert len(labels) == 16 and sorted(set(labels.tolist())) == [0, 1, 2]
    assert max(labels.bincount()) - min(labels.bincount()) <= 1  # evenly spread
