"""How many graphs `torch.compile` built in a run: logged each epoch the count grows.

With `model.compile` on, dynamo compiles a graph per net and mode the first time it runs, and
again for what its guards did not expect (a new batch size, a train/eval switch, a changed
attribute): each recompile costs seconds to minutes, and past dynamo's recompile limit (8 a net)
that net runs eagerly. So at each epoch's end the callback logs the graphs compiled so far this
run (INFO, and `train/compiled_graphs` to the loggers): a count still growing after the first
epochs is a recompile on every step, whose reasons `TORCH_LOGS=recompiles` prints. Inert when
`model.compile` is off.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from dcgan_lightning.models.compile import compile_mode

log = logging.getLogger(__name__)


def compiled_graphs() -> int:
    """Frames dynamo has compiled in this process, all nets together (its counters are global)."""
    from torch._dynamo.utils import counters  # no public counter as of torch 2.14

    return int(counters["frames"]["ok"])


class CompileReport(Callback):
    """Logs the graphs `torch.compile` built since the fit began, at each epoch that added some."""

    def __init__(self) -> None:
        self.active = False
        self.start = 0  # the process's count when the fit started (earlier fits compiled those)
        self.reported = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.active = compile_mode(pl_module.hparams.get("compile")) is not None
        self.start, self.reported = compiled_graphs(), 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        graphs = compiled_graphs() - self.start
        if graphs == self.reported:
            return
        if trainer.is_global_zero:
            log.info(
                "torch.compile: %d graphs compiled in this run by the end of epoch %d (%d new); "
                "TORCH_LOGS=recompiles says why each recompiled",
                graphs,
                trainer.current_epoch,
                graphs - self.reported,
            )
            # The batch axis of the other train logs (global_step counts 2 a batch), at the step
            # Lightning logs this epoch's `train/*_epoch` values at: its last batch's.
            batch = trainer.fit_loop.epoch_loop._batches_that_stepped - 1
            for logger in trainer.loggers:
                logger.log_metrics({"train/compiled_graphs": graphs}, step=batch)
        self.reported = graphs
