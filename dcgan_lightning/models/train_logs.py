"""The GAN numbers per step and per epoch, at no per-step cost beyond a few small device ops.

`self.log(..., on_step=True)` costs ~0.5 ms of Python per value and call (Lightning moves its
result object, a torchmetrics `Metric`, to the value's device each time), and
`MeanMetric(nan_strategy=...)` reads a NaN flag on the host per update: on a GPU step of ~2 ms
that is most of the time. Instead each step adds its values, and whether each is finite, into
two device tensors; on the batches Lightning sends to the loggers (`trainer.log_every_n_steps`)
`log_step` copies the step's values to the host at once and puts them where `self.log` would;
`epoch_means` reduces the sums over all ranks once per epoch. Non-finite values (a step skipped
by `on_nonfinite=skip`) are left out of the means.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer
from torch import nn

NAMES = ("loss_d", "loss_g", "d_real", "d_fake", "ada_p", "r_t")  # the last two: with ADA


class TrainLogs(nn.Module):
    """Device-side sums and counts of `NAMES` over the current epoch (not checkpointed)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("totals", torch.zeros(2, len(NAMES), dtype=torch.float64), False)
        self.register_buffer("missing", torch.tensor(float("nan")), False)
        self.logged = [False] * len(NAMES)  # host-side: which names this epoch logged at all

    def add(self, values: dict[str, torch.Tensor]) -> None:
        """Accumulate this step's values (any subset of `NAMES`)."""
        self.logged = [old or name in values for old, name in zip(self.logged, NAMES)]
        missing = self.missing  # NaN: counts as not logged
        stacked = torch.stack([values.get(n, missing).detach().float() for n in NAMES]).double()
        finite = torch.isfinite(stacked)
        self.totals.add_(torch.stack([torch.where(finite, stacked, 0.0), finite.double()]))

    @staticmethod
    def logging_now(trainer: Trainer) -> bool:
        """Whether Lightning sends step metrics to the loggers after this batch."""
        return trainer._logger_connector.should_update_logs

    @staticmethod
    def log_step(trainer: Trainer, values: dict[str, torch.Tensor]) -> None:
        """`train/<name>_step` of this rank's `values` where `self.log(..., on_step=True,
        prog_bar=True)` puts them: the loggers (at the step and with the `epoch` Lightning's step
        logging uses), `trainer.progress_bar_metrics` and `trainer.callback_metrics`."""
        names = [f"train/{name}_step" for name in values]
        host = torch.stack([v.detach().float() for v in values.values()]).cpu().unbind()
        trainer.callback_metrics.update(zip(names, host))
        trainer.progress_bar_metrics.update((n, v.item()) for n, v in zip(names, host))
        trainer._logger_connector.log_metrics(dict(zip(names, host)))

    def epoch_means(self, trainer: Trainer) -> dict[str, torch.Tensor]:
        """Means over every rank's steps of this epoch (NaN where none counted); resets the sums.
        Collective under DDP: every rank calls it."""
        totals = trainer.strategy.reduce(self.totals.clone(), reduce_op="sum")
        self.totals.zero_()
        means = totals[0] / totals[1]  # 0/0 = NaN: nothing finite was logged
        counted, self.logged = self.logged, [False] * len(NAMES)
        return {name: means[i].float() for i, name in enumerate(NAMES) if counted[i]}
