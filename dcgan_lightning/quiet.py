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


def silence_library_noise() -> None:
    """Install the filters (idempotent: safe to call at every run's start)."""
    for message in NOISE:
        warnings.filterwarnings("ignore", message=message)
    log = lightning_rank_zero.log
    if not any(isinstance(f, _DropMessages) for f in log.filters):
        log.addFilter(_DropMessages())
