"""What a NaN or infinite loss does to a run (`model.on_nonfinite`): `stop` it with the step and the
last good checkpoint named, or `skip` that optimizer update with a warning.

Checked before each backward, so no non-finite gradient reaches the weights and no checkpoint
written afterwards holds NaNs. Under DDP the ranks vote: one rank's NaN stops or skips the step on
every rank, so no rank steps or all-reduces alone.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

POLICIES = ("stop", "skip")


class DivergedError(FloatingPointError):
    """A loss became NaN or infinite under `on_nonfinite=stop`."""


def last_good_checkpoint(trainer: Trainer) -> str:
    """The checkpoint to go back to: the last one this run wrote, else the one it resumed from."""
    callback = trainer.checkpoint_callback
    written = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return written or trainer.ckpt_path or ""


def finite_loss(trainer: Trainer, loss: torch.Tensor, name: str, policy: str) -> bool:
    """True when `loss` is finite on every rank; otherwise raise (`stop`) or warn and return False
    (`skip`: the caller leaves out this backward and optimizer step)."""
    finite = trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss).all()), all=True)
    if finite:
        return True
    where = (
        f"Non-finite {name} ({loss.item()}) at global step {trainer.global_step} "
        f"(epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx})"
    )
    if policy == "skip":
        rank_zero_warn(f"{where}: skipped this optimizer step (model.on_nonfinite=skip).")
        return False
    ckpt = last_good_checkpoint(trainer)
    back = f"Last good checkpoint: {ckpt}; resume with ckpt_path={ckpt}"
    if not ckpt:
        back = "No checkpoint was written before it; start again"
    raise DivergedError(
        f"{where}: training stopped. {back}, perhaps with model.grad_clip_norm set, or with "
        "model.on_nonfinite=skip to skip such steps."
    )
