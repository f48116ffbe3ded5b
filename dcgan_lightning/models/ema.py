"""An exponential moving average of the generator's weights, updated without a host sync.

`torch.optim.swa_utils.AveragedModel` reads its step counter on the host at every update
(`bool(n_averaged == 0)`), which stalls a fast GPU once per step. This one decides on the host
from the global step it is given, and averages with one fused `lerp` over all weights. Its state
dict keeps AveragedModel's keys (`module.*`, `n_averaged`): older checkpoints still load.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA(nn.Module):
    """`module` tracks `source`: a copy before `start_step`, then w <- decay * w + (1 - decay) * g.

    BatchNorm statistics are copied, not averaged: averaged ones lag ~1/(1-decay) steps behind the
    weights, and the EMA generator draws flat grey images until they catch up.

    `rampup` is StyleGAN2-ADA's `ema_rampup` (0.05 there): the average's half-life, in updates,
    is at most `rampup` x the updates so far, so that early in a run, when G improves fastest, the
    average does not hold on to a much worse G. ADA states the rule in images (half-life
    min(ema_kimg x 1000, rampup x images seen), beta = 0.5 ** (batch / half-life)); images per
    update cancel, leaving beta = min(decay, 0.5 ** (1 / (rampup x updates so far))), where
    `decay` is the beta of the full half-life, ln(0.5) / ln(decay) updates (ADA's ema_kimg x 1000
    / batch: decay 0.99 is a half-life of 69 updates). The first update copies G.
    """

    def __init__(
        self, source: nn.Module, decay: float, start_step: int = 0, rampup: float | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"model.ema.decay must be in [0, 1), got {decay}")
        if rampup is not None and rampup <= 0:
            raise ValueError(f"model.ema.rampup (half-life / updates) must be > 0, got {rampup}")
        self.decay, self.start_step, self.rampup = decay, start_step, rampup
        self.module = copy.deepcopy(source).requires_grad_(False)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))
        self._updates = 0  # the host copy of n_averaged: the decay is chosen without a sync
        self.register_load_state_dict_post_hook(_sync_update_count)

    def current_decay(self) -> float:
        """The decay of the next update: `decay`, or less while `rampup` x the updates before it
        is shorter than its half-life."""
        if self.rampup is None:
            return self.decay
        half_life = self.rampup * self._updates  # in updates; ADA's max(., 1e-8) in images
        return min(self.decay, 0.5 ** (1.0 / half_life)) if half_life > 1e-8 else 0.0

    @torch.no_grad()
    def update(self, source: nn.Module, global_step: int) -> None:
        mine = list(self.module.parameters())
        theirs = [p.detach() for p in source.parameters()]
        decay = self.current_decay()
        self._updates += 1
        if global_step < self.start_step or decay == 0.0:
            torch._foreach_copy_(mine, theirs)
        else:
            torch._foreach_lerp_(mine, theirs, 1.0 - decay)
        buffers = list(self.module.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(source.buffers()))
        self.n_averaged.add_(1)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def _sync_update_count(module: EMA, incompatible_keys: Any) -> None:
    """After loading a state dict (resume): the host copy of the update counter (one read)."""
    module._updates = int(module.n_averaged)
