"""What a NaN or infinite loss does to a run (`model.on_nonfinite`): `stop` it with the step and the
last good checkpoint named, or `skip` that optimizer update with a warning.

`stop` costs nothing per step: each loss is checked on the device into a flag (no host sync, no
collective), and the flag is read, and reduced over the ranks, only at log intervals, at the end
of each epoch and before every checkpoint is written. A diverged run may therefore take up to
`log_every_n_steps` more (non-finite) steps, but it never writes a checkpoint after the first bad
loss, and it stops naming that loss's global step. `skip` has to decide before each update, so it
reads every loss on the host (and, under DDP, takes one vote of all ranks per step): it is the
slower policy, for runs that must go on.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn

POLICIES = ("stop", "skip")
LOSS_NAMES = ("loss_d", "loss_g")


class DivergedError(FloatingPointError):
    """A loss became NaN or infinite under `on_nonfinite=stop`."""


def last_good_checkpoint(trainer: Trainer) -> str:
    """The checkpoint to go back to: the last one this run wrote, else the one it resumed from."""
    callback = trainer.checkpoint_callback
    written = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return written or trainer.ckpt_path or ""


class NonFiniteGuard(nn.Module):
    """Records, on the device, the global step of each loss's first non-finite value."""

    def __init__(self, policy: str) -> None:
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"on_nonfinite must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        # Per loss of LOSS_NAMES: the first bad global step, inf while none; not checkpointed.
        self.register_buffer("first_bad", torch.full((len(LOSS_NAMES),), math.inf), False)

    def finite(self, trainer: Trainer, loss: torch.Tensor, name: str) -> bool:
        """Whether the caller should backward and step. `stop`: always (checked later, sync-free:
        three small device ops); `skip`: False, with a warning, when `loss` is not finite on some
        rank (a host read, and a vote under DDP)."""
        if self.policy == "skip":
            return self._vote(trainer, loss, name)
        first = self.first_bad[LOSS_NAMES.index(name)]
        step = torch.where(torch.isfinite(loss.detach()), math.inf, float(trainer.global_step))
        torch.minimum(first, step, out=first)
        return True

    def check(self, trainer: Trainer) -> None:
        """Raise `DivergedError` on every rank when any rank saw a non-finite loss. One host sync
        and, under DDP, one collective: call it at log intervals, never per step."""
        if self.policy != "stop":
            return
        first = self.first_bad
        if trainer.world_size > 1:  # the earliest bad step of any rank, agreed by all
            first = trainer.strategy.reduce(first.clone(), reduce_op="min")
        first = first.tolist()
        step = min(first)
        if math.isinf(step):
            return
        ckpt = last_good_checkpoint(trainer)
        back = f"Last good checkpoint: {ckpt}; resume with ckpt_path={ckpt}"
        if not ckpt:
            back = "No checkpoint was written before it; start again"
        raise DivergedError(
            f"Non-finite {LOSS_NAMES[first.index(step)]} (NaN or inf) at global step {int(step)} "
            f"(detected at epoch {trainer.current_epoch}): training stopped. {back}, perhaps with "
            "model.grad_clip_norm set, or with model.on_nonfinite=skip to skip such steps."
        )

    def _vote(self, trainer: Trainer, loss: torch.Tensor, name: str) -> bool:
        local = bool(torch.isfinite(loss).all())
        finite = trainer.strategy.reduce_boolean_decision(local, all=True)
        if not finite:
            where = (
                f"Non-finite {name} ({loss.item()}) at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx})"
            )
            rank_zero_warn(f"{where}: skipped this optimizer step (model.on_nonfinite=skip).")
        return finite
