"""The training plots GAN users read: D(x) and D(G(z)), the G and D losses, the quality metrics.

PNGs in `dirpath`, redrawn at every epoch end (a run stopped early still has them), and sent to the
loggers that show images at the end of fit. Values come from what the LightningModule and the
quality-metrics callback log: read on every rank (reading may reduce `sync_dist` values across
ranks, a collective), recorded and drawn on rank zero.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure

from dcgan_lightning.callbacks.samples import log_image
from dcgan_lightning.models.train_logs import TrainLogs

# Each figure: its file name and the logged keys it draws, with their legend labels.
FIGURES = {
    "discriminator": {"train/d_real": "D(x)", "train/d_fake": "D(G(z))"},
    "losses": {"train/loss_d": "D loss", "train/loss_g": "G loss"},
}
# Metrics drawn in one panel of metrics.png (same scale); every other metric gets its own.
SHARED_PANELS = {
    "precision / recall / density / coverage": (
        "val/precision", "val/recall", "val/density", "val/coverage"
    ),
}  # fmt: skip
PANELS_PER_ROW = 4
# D(x) / D(G(z)) as each loss logs them (models/losses.py d_outputs): BCE a probability, a 0.5
# chance line; hinge and LSGAN raw scores, their targets drawn (hinge's margins +-1, boundary 0).
D_AXES = {
    "bce": ("D's mean probability of real", (0.0, 1.0), (0.5,)),
    "hinge": ("D's mean raw score", None, (1.0, 0.0, -1.0)),
    "lsgan": ("D's mean raw score", None, (1.0, 0.0)),
}
LEGEND_MAX_LINES = 12  # a per-class panel of more classes draws them unlabelled


class TrainingPlots(Callback):
    """discriminator.png, losses.png and metrics.png, against training progress in epochs.

    Per-batch values are read on the batches that log them, every `trainer.log_every_n_steps`
    (reading a GPU value synchronises, so not every batch); per-epoch means are drawn on top.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.loss = "bce"  # the model's, at setup: how D(x) and D(G(z)) are logged
        # key -> list of (epoch as a float, value); kept in checkpoints so resumed runs continue.
        self.history: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.loss = getattr(pl_module.hparams, "loss", "bce")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if not TrainLogs.logging_now(trainer):  # the batches whose step values were just logged
            return
        progress = trainer.current_epoch + (i + 1) / max(1, trainer.num_training_batches)
        self._record(trainer, "_step", progress, "train/")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, "_epoch", trainer.current_epoch + 0.5, "train/")  # mid-epoch
        if trainer.is_global_zero:
            self.draw()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:  # evaluations may end any batch (metrics.every_n_kimg)
            batch = trainer.fit_loop.epoch_loop.batch_idx + 1
            progress = trainer.current_epoch + batch / max(1, trainer.num_training_batches)
            self._record(trainer, "", progress, "val/")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for path in self.draw():
            log_image(trainer, f"plots/{path.stem}", path)

    def _record(self, trainer: pl.Trainer, suffix: str, x: float, prefix: str) -> None:
        """On every rank: reading `callback_metrics` may run Lightning's deferred reduction of
        `sync_dist=True` values, a collective (rank 0 alone would hang). Rank 0 keeps them."""
        metrics = trainer.callback_metrics
        if not trainer.is_global_zero:
            return
        for key, value in metrics.items():
            if key.startswith(prefix) and key.endswith(suffix) and value.numel() == 1:
                self.history[key].append((float(x), float(value)))

    def draw(self) -> list[Path]:
        """Write every figure that has data; return their paths."""
        self.dirpath.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, series in FIGURES.items():
            if any(f"{key}_step" in self.history for key in series):
                paths.append(self._draw_training(name, series))
        metrics = sorted(k for k in self.history if k.startswith("val/") and "_std" not in k)
        if metrics:
            paths.append(self._draw_metrics(metrics))
        return paths

    def _draw_training(self, name: str, series: dict[str, str]) -> Path:
        fig = Figure(figsize=(7, 4), layout="constrained")
        ax = fig.add_subplot()
        for i, (key, label) in enumerate(series.items()):
            colour = f"C{i}"
            if steps := self.history.get(f"{key}_step"):
                ax.plot(*zip(*steps), color=colour, alpha=0.35, linewidth=0.8)
            if epochs := self.history.get(f"{key}_epoch"):
                ax.plot(*zip(*epochs), "o-", color=colour, label=f"{label} (epoch mean)")
            else:
                ax.plot([], [], color=colour, label=label)
        if name == "discriminator":
            label, limits, lines = D_AXES.get(self.loss, ("D's mean output", None, ()))
            for y in lines:
                ax.axhline(y, color="grey", linestyle=":", linewidth=1)
            if limits is not None:
                ax.set_ylim(*limits)
            ax.set_ylabel(label)
        ax.set_xlabel("epoch")
        ax.legend()
        return self._save(fig, name)

    def _draw_metrics(self, keys: list[str]) -> Path:
        # One panel per metric (different scales), PANELS_PER_ROW to a row; SWD's per-level values
        # share the SWD panel, precision/recall/density/coverage one panel, and a conditional
        # model's val/<metric>/<class> one panel per metric, with val/<metric>_class_mean.
        shared = {key: title for title, group in SHARED_PANELS.items() for key in group}
        for key in keys:
            if key.count("/") > 1 or key.endswith("_class_mean"):
                metric = key.rsplit("/", 1)[0] if key.count("/") > 1 else key[: -len("_class_mean")]
                shared[key] = f"{metric}/<class>"
        panels = list(dict.fromkeys(shared.get(k, k) for k in keys if not _is_level(k)))
        rows, cols = -(-len(panels) // PANELS_PER_ROW), min(len(panels), PANELS_PER_ROW)
        fig = Figure(figsize=(4 * cols, 3.5 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).flatten()
        for ax, panel in zip(axes, panels):
            if panel in SHARED_PANELS:
                for i, key in enumerate(k for k in SHARED_PANELS[panel] if k in keys):
                    ax.plot(*zip(*self.history[key]), "o-", color=f"C{i}", label=key)
            elif panel.endswith("/<class>"):
                self._draw_per_class(ax, [k for k in keys if shared.get(k) == panel])
            else:
                self._draw_metric(ax, panel, keys)
            ax.set_xlabel("epoch")
            ax.set_title(panel)
            if 1 < len(ax.get_lines()) <= LEGEND_MAX_LINES:
                ax.legend(fontsize="small")
        for ax in axes[len(panels) :]:
            ax.set_axis_off()
        return self._save(fig, "metrics")

    def _draw_metric(self, ax: Any, key: str, keys: list[str]) -> None:
        """One metric, its +/- std band, and its per-level values (SWD)."""
        x, y = zip(*self.history[key])
        ax.plot(x, y, "o-", color="C0", label=key)
        if std := self.history.get(f"{key}_std"):
            lo = [v - s for v, (_, s) in zip(y, std)]
            hi = [v + s for v, (_, s) in zip(y, std)]
            ax.fill_between(x, lo, hi, color="C0", alpha=0.2)
        for i, level in enumerate(k for k in keys if _is_level(k) and k.startswith(f"{key}_")):
            ax.plot(*zip(*self.history[level]), ".--", color=f"C{i + 1}", label=level)

    def _draw_per_class(self, ax: Any, keys: list[str]) -> None:
        """Each class a thin line, their mean (val/<metric>_class_mean) on top."""
        for i, key in enumerate(k for k in keys if not k.endswith("_class_mean")):
            ax.plot(*zip(*self.history[key]), "-", color=f"C{i % 10}", alpha=0.5, label=key)
        for key in (k for k in keys if k.endswith("_class_mean")):
            ax.plot(*zip(*self.history[key]), "o-", color="black", label=key)

    def _save(self, fig: Figure, name: str) -> Path:
        path = self.dirpath / f"{name}.png"
        fig.savefig(path, dpi=100)
        return path

    def state_dict(self) -> dict[str, Any]:
        return {"history": dict(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = defaultdict(list, state_dict["history"])


def _is_level(key: str) -> bool:
    """A pyramid level of SWD (val/swd_16px), drawn in its metric's panel."""
    return key.endswith("px") and key.rsplit("_", 1)[-1][:-2].isdigit()
