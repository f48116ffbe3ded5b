"""BatchNorm statistics for the sampling generator's current weights ("standing statistics").

In eval mode a BatchNorm layer normalises with its running statistics. The live generator's lag
its weights by ~1/momentum steps; an EMA generator's are the live generator's, copied, so they
belong to other weights altogether. Samples drawn with statistics that do not belong to the weights
can be washed out or flat grey. pytorch/examples draws its samples in train mode (each batch's
own statistics), which ties the images to the batch they were drawn in. Here the statistics are
re-estimated for the current weights, as BigGAN's "standing statistics" are: the cumulative mean
of the batch statistics over a few fixed batches of z. They are swapped in only while sampling
(the net's own buffers, which training and checkpoints see, are put back) and kept until the
weights change, so sample grids, metrics and generation all see the same, current statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

Draw = Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]
SEED = 2**31 - 1  # the same z on every rank: every rank estimates the same statistics


def batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class StandingStats:
    """Estimates, caches and swaps in BatchNorm statistics for a net's current weights."""

    def __init__(self, batches: int = 4, batch_size: int = 64) -> None:
        self.batches, self.batch_size = batches, batch_size
        self._key: tuple | None = None
        self._stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    @staticmethod
    def _weights_key(net: nn.Module) -> tuple:
        """Changes whenever a weight does: an optimizer step, an EMA update or a loaded state
        dict all bump the parameters' version counters (read on the host: no device sync)."""
        return (id(net), *(p._version for p in net.parameters()))

    @torch.no_grad()
    def _estimate(self, net: nn.Module, draw: Draw) -> list[tuple[torch.Tensor, torch.Tensor]]:
        bns = batchnorms(net)
        device = next(net.parameters()).device
        rng = torch.Generator(device).manual_seed(SEED)
        saved = [(m.momentum, m.training) for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative mean over the batches below
            m.train()
        try:  # in fp32 wherever it runs (a validation loop's autocast or not): the same values
            with torch.autocast(device.type, enabled=False):
                for _ in range(self.batches):
                    net(*draw(self.batch_size, rng))
            return [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
        finally:
            for m, (momentum, training) in zip(bns, saved):
                m.momentum = momentum
                m.train(training)

    @contextlib.contextmanager
    def applied(self, net: nn.Module, draw: Draw) -> Iterator[None]:
        """Within: `net`'s BatchNorms hold the statistics of its current weights (estimated from
        `draw(n, rng)`, G's inputs for n samples, when the weights changed); after: its own."""
        bns = batchnorms(net)
        if not bns:
            yield
            return
        own = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
               for m in bns]  # fmt: skip
        key = self._weights_key(net)
        if key != self._key:
            self._stats = self._estimate(net, draw)
            self._key = self._weights_key(net)
        try:
            for m, (mean, var) in zip(bns, self._stats):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
            yield
        finally:
            for m, (mean, var, count) in zip(bns, own):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
