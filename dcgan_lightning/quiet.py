"""Silence the library messages a user can do nothing about; every other warning stays.

Each filter matches one message's text, so a new or different warning from the same library (and
every warning of this project) still shows. W&B's "anonymous setting" warning is avoided where
it starts instead (`loggers.wandb_logger`).
"""

from __future__ import annotations

import logging
import warnings

import lightning_utilities.core.rank_zero as lightning_rank_zero

# Warnings, by the start of their text (a regex, matched at the start of the message).
NOISE = (
    # Lightning's own pytree helper trips torch's deprecation of LeafSpec: Lightning's to fix.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Under mixed precision the weights are fp32: the summary's 32-bit size is the right one.
    r"Precision (bf16|16)-mixed is not supported by the model summary",
    # Small data sets log once per epoch anyway (the epoch means).
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)
# Lightning's rank-zero log lines (info level), by their text.
LOG_NOISE = ("💡 Tip: For seamless cloud logging and experiment tracking",)


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LOG_NOISE)


def log_lightning_once() -> None:
    """Lightning's package logger has a console handler of its own ("INFO: ..."); its subpackages
    keep theirs apart from the root logger only when it had no handlers when they were imported.
    Imported after Hydra set up logging (the CLI imports Lightning lazily), every Lightning line
    went out twice: through that handler and through Hydra's console and train.log handlers.
    With the root logger set up, they go through the root's handlers alone."""
    if not logging.getLogger().hasHandlers():
        return
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        if type(handler) is logging.StreamHandler:
            lightning.removeHandler(handler)


def silence_library_noise() -> None:
    """Install the filters (idempotent: safe to call at every run's start)."""
    log_lightning_once()
    for message in NOISE:
        warnings.filterwarnings("ignore", message=message)
    log = lightning_rank_zero.log
    if not any(isinstance(f, _DropMessages) for f in log.filters):
        log.addFilter(_DropMessages())
