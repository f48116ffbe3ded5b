"""How far a discriminator has memorised its training set: the r_v of Karras et al. 2020.

    r_v = (E[D(train)] - E[D(held-out)]) / (E[D(train)] - E[D(generated)])

0 when D scores real images it never saw like the ones it trained on; 1 when it scores them as low
as generated ones, i.e. it has learnt the training images rather than what makes an image real.
A ratio of logit differences, so BCE, hinge and least-squares discriminators compare.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from dcgan_lightning.models.gan_module import GAN


@contextmanager
def seeded_streams(device: torch.device, seed: int) -> Iterator[None]:
    """Global draws inside (DiffAugment's) start from `seed`; every global stream, CPU and
    `device`'s, is as it was afterwards. `torch.manual_seed` would reseed every CUDA device."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


@torch.no_grad()
def discriminator_overfitting(
    model: GAN,
    train: torch.Tensor,
    heldout: torch.Tensor,
    generated: torch.Tensor,
    batch_size: int,
    seed: int = 0,
    labels: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """r_v and the mean logits behind it, for images in [-1, 1] on the model's device (and, for
    a conditional model, `labels`: the classes of train, held-out and generated images).

    D runs as in a training step (batch statistics, the model's DiffAugment) but without dropout.
    Each set meets the same D, a fresh copy of the model's (spectral norm's power iteration
    moves D's weights at every forward in training mode; the model itself is untouched), and the
    same augmentation draws (image i of every set gets the same ones), so identical sets score
    identically. No global random stream moves.
    """

    def mean_logit(images: torch.Tensor, classes: torch.Tensor | None) -> float:
        D = copy.deepcopy(model.discriminator).train()
        for module in D.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
        batches = images.split(batch_size)
        per_batch = classes.split(batch_size) if classes is not None else [None] * len(batches)
        with seeded_streams(images.device, seed):
            logits = [D(model.augment(x), *model.conditions(y)) for x, y in zip(batches, per_batch)]
        return torch.cat(logits).float().mean().item()

    sets = zip((train, heldout, generated), labels or (None, None, None))
    d_train, d_heldout, d_generated = (mean_logit(x, y) for x, y in sets)
    gap = d_train - d_generated
    return {
        "r_v": (d_train - d_heldout) / gap if gap else math.nan,
        "d_train": d_train,
        "d_heldout": d_heldout,
        "d_generated": d_generated,
    }
