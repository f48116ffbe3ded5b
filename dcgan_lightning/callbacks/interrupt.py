"""Ctrl-C or SIGTERM: finish the current batch, save `last.ckpt`, exit with 128 + the signal number.

Lightning already handles SIGTERM this way up to the save: its handler sets a flag, the loops raise
`SIGTERMException` between batches (on every rank together under DDP) and call `on_exception`. A
Ctrl-C, though, raises `KeyboardInterrupt` wherever it lands, possibly between the D and G updates,
and Lightning then exits without saving. This callback sends SIGINT down the SIGTERM path and saves
on that exception. A second Ctrl-C stops at once (Lightning's own shutdown, no save).
"""

from __future__ import annotations

import logging
import shlex
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def resume_command(ckpt: Path) -> str:
    """The command line that continues this run from `ckpt`: same overrides, new `ckpt_path`."""
    overrides = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("ckpt_path=")]
    return shlex.join(["python", "-m", "dcgan_lightning", *overrides, f"ckpt_path={ckpt}"])


class SaveOnInterrupt(Callback):
    """Saves `dirpath/last.ckpt` when SIGINT or SIGTERM ends training (see the module docstring)."""

    def __init__(self, dirpath: str) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.received: int | None = None
        self._lightning_handler: Any = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received = None
        self._lightning_handler = signal.getsignal(signal.SIGTERM)
        main_thread = threading.current_thread() is threading.main_thread()
        if not callable(self._lightning_handler) or not main_thread:
            return  # no Lightning handler (Windows), or signals cannot be set here: its defaults
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == self.received == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        # The first signal names the exit code; a SIGTERM that a DDP launcher forwards after it
        # is neither a second Ctrl-C nor a new reason.
        self.received = self.received or signum
        log.warning(
            "%s: finishing this batch, then saving %s%s",
            signal.Signals(signum).name,
            self.path,
            " (Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else "",
        )
        self._lightning_handler(signal.SIGTERM, frame)  # Lightning stops after this batch

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()
        if not isinstance(exception, SIGTERMException):
            return  # a crash or a divergence: keep the last good checkpoint as it is
        signum = self.received or signal.SIGTERM
        trainer.save_checkpoint(self.path)
        exception.code = 128 + signum  # the shell's convention for "ended by this signal"
        if trainer.is_global_zero:
            log.warning(
                "Interrupted by %s at epoch %d, global step %d; saved %s. Resume with:\n  %s",
                signal.Signals(signum).name,
                trainer.current_epoch,
                trainer.global_step,
                self.path,
                resume_command(self.path),
            )
