"""The four GAN numbers per step and per epoch, at no per-step cost beyond one small device add.

`self.log(..., on_step=True, on_epoch=True)` on every batch costs ~0.4 ms of Python per value, and
`MeanMetric(nan_strategy=...)` reads a NaN flag on the host per update: on a GPU step of ~2 ms
that is most of the time. Instead each step adds its values, and whether each is finite, into
two device tensors; `TrainLogs.step_values` hands Lightning the step's values only on the batches
it logs (`trainer.log_every_n_steps`), and `epoch_means` reduces the sums over all ranks once per
epoch. Non-finite values (a step skipped by `on_nonfinite=skip`) are left out of the means.
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

    def epoch_means(self, trainer: Trainer) -> dict[str, torch.Tensor]:
        """Means over every rank's steps of this epoch (NaN where none counted); resets the sums.
        Collective under DDP: every rank calls it."""
        totals = trainer.strategy.reduce(self.totals.clone(), reduce_op="sum")
        self.totals.zero_()
        means = totals[0] / totals[1]  # 0/0 = NaN: nothing finite was logged
        counted, self.logged = self.logged, [False] * len(NAMES)
        return {name: means[i].float() for i, name in enumerate(NAMES) if counted[i]}
