"""An exponential moving average of the generator's weights, updated without a host sync.

`torch.optim.swa_utils.AveragedModel` reads its step counter on the host at every update
(`bool(n_averaged == 0)`), which stalls a fast GPU once per step. This one decides on the host
from the global step it is given, and averages with one fused `lerp` over all weights. Its state
dict keeps AveragedModel's keys (`module.*`, `n_averaged`): older checkpoints still load.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """`module` tracks `source`: a copy before `start_step`, then w <- decay * w + (1 - decay) * g.

    BatchNorm statistics are copied, not averaged: averaged ones lag ~1/(1-decay) steps behind the
    weights, and the EMA generator draws flat grey images until they catch up.
    """

    def __init__(self, source: nn.Module, decay: float, start_step: int = 0) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"model.ema.decay must be in [0, 1), got {decay}")
        self.decay, self.start_step = decay, start_step
        self.module = copy.deepcopy(source).requires_grad_(False)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def update(self, source: nn.Module, global_step: int) -> None:
        mine = list(self.module.parameters())
        theirs = [p.detach() for p in source.parameters()]
        if global_step < self.start_step or self.decay == 0.0:
            torch._foreach_copy_(mine, theirs)
        else:
            torch._foreach_lerp_(mine, theirs, 1.0 - self.decay)
        buffers = list(self.module.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(source.buffers()))
        self.n_averaged.add_(1)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
