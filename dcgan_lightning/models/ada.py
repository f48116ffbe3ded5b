"""Adaptive augmentation (ADA, Karras et al. 2020): augment only as much as D overfits.

D's overfitting shows in r_t = E[sign(D(real))]: near 0 while D cannot tell real from fake, near
1 once it has memorised the real images. Every `interval` batches the probability p with which
each DiffAugment op is applied moves by a fixed step toward holding r_t at `target`. The
controller state lives in buffers: it is saved in checkpoints, resumed exactly, and the same on
every rank (the statistics are pooled over ranks at each adjustment, not per step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dcgan_lightning.models.diffaugment import DiffAugment


class AdaptiveAugment(nn.Module):
    """DiffAugment of `policy` with each op applied per image with an adapted probability p.

    ADA's own defaults are target 0.6, interval 4 and kimg 500; 500k images is 2% of the
    multi-million-image runs ADA was made for. This project's small-data runs see 100-200k images
    in all (Monet: 300 images x 500 epochs; Picasso: 439 x 400), in which p would climb to at most
    0.3. `kimg=50` lets p go from 0 to 1 in 50k images (1,563 batches at batch 32, a third of such
    a run), so it can follow D within the run; one adjustment moves it by 0.0026 at batch 32.
    """

    def __init__(
        self, policy: Sequence[str], target: float = 0.6, interval: int = 4, kimg: float = 50
    ) -> None:
        super().__init__()
        if not 0 < target < 1:
            raise ValueError(f"ada target is a value of E[sign(D(real))] in (0, 1), got {target}")
        if interval < 1:
            raise ValueError(f"ada interval is a number of batches >= 1, got {interval}")
        if kimg <= 0:
            raise ValueError(f"ada kimg (thousands of images for p to go 0 -> 1) > 0, got {kimg}")
        self.augment = DiffAugment(policy)
        if not self.augment.ops:
            raise ValueError(
                "ADA adapts DiffAugment ops: set model.diffaugment, e.g. [color, translation]"
            )
        self.target, self.interval, self.kimg = target, interval, kimg
        self.register_buffer("p", torch.zeros(()))
        self.register_buffer("r_t", torch.zeros(()))  # at the last adjustment, for logging
        # Integers, so a cast of the module to half precision cannot round them.
        self.register_buffer("sign_sum", torch.zeros((), dtype=torch.long))  # of sign(D(real))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # logits in sign_sum
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))  # adjust() calls
        # The host's copy of `batches`, so that deciding when to adjust never reads the device.
        self._batches = 0
        self.register_load_state_dict_post_hook(_sync_batch_count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.augment(x, self.p)

    @torch.no_grad()
    def observe(self, d_real_logits: torch.Tensor) -> None:
        """Accumulate sign(D(real)) on the device: no host sync, no collective.

        NaN logits (a step about to be skipped as non-finite) are left out, not counted.
        """
        logits = d_real_logits.detach()
        self.sign_sum += (logits > 0).sum() - (logits < 0).sum()
        self.count += (~logits.isnan()).sum()

    @torch.no_grad()
    def adjust(self, batch_size: int, world_size: int = 1) -> None:
        """Call once per batch: every `interval`-th call pools the statistics over ranks (one
        all-reduce) and moves p by sign(r_t - target) * batch_size * world_size * interval /
        (kimg * 1000), the images all ranks saw since the last move over those for 0 -> 1.
        """
        self._batches += 1
        self.batches += 1
        if self._batches % self.interval:
            return
        stats = torch.stack([self.sign_sum, self.count])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        self.r_t.copy_(stats[0] / stats[1].clamp(min=1))  # no logits yet: 0, p moves down
        step = batch_size * world_size * self.interval / (self.kimg * 1000)
        self.p.add_(torch.sign(self.r_t - self.target) * step).clamp_(0, 1)
        self.sign_sum.zero_()
        self.count.zero_()

    def extra_repr(self) -> str:
        return f"target={self.target}, interval={self.interval}, kimg={self.kimg}"


def _sync_batch_count(module: AdaptiveAugment, incompatible_keys: Any) -> None:
    """After loading a state dict (resume): the host copy of the batch counter (one read)."""
    module._batches = int(module.batches)
