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
from typing import Any

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
    @torch.no_grad()
    def _weights_key(net: nn.Module) -> tuple:
        """Changes whenever a weight does: each parameter's sum, read on the host. Version
        counters miss writes that bypass autograd (DDP's broadcast of rank 0's weights left a
        rank sampling with the statistics of its own initial weights). One device sync per
        sampling call, never in a training step."""
        sums = torch.stack([p.detach().float().sum() for p in net.parameters()])
        return (id(net), *sums.tolist())

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

    def agree(self, net: nn.Module, draw: Draw, broadcast: Callable[[Any], Any]) -> None:
        """Every rank takes rank 0's statistics for the current weights (called on all ranks
        together, at each evaluation's start). Estimates agree only to float rounding across
        processes, and at an early evaluation, where D barely tells real from fake, `val/r_v`
        magnifies that into ranks logging different values."""
        if not batchnorms(net):
            return
        key = self._weights_key(net)
        stats = self._estimate(net, draw) if key != self._key else self._stats
        self._stats = [tuple(t.to(s.device) for t in pair)
                       for pair, s in zip(broadcast([(m.cpu(), v.cpu()) for m, v in stats]),
                                          [m for m, _ in stats])]  # fmt: skip
        self._key = key

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
            self._key = key
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
