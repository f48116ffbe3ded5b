"""How far a trained discriminator has memorised its training set: the r_v of Karras et al. 2020.

    r_v = (E[D(train)] - E[D(held-out)]) / (E[D(train)] - E[D(generated)])

0 when D scores real images it never saw like the ones it trained on; 1 when it scores them as low
as generated ones, i.e. it has learnt the training images rather than what makes an image real.
A ratio of logit differences, so BCE, hinge and least-squares discriminators compare.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dcgan_lightning.models.gan_module import GAN


@torch.no_grad()
def discriminator_overfitting(
    model: GAN, train: torch.Tensor, heldout: torch.Tensor, batch_size: int, seed: int = 0
) -> dict[str, float]:
    """r_v and the mean logits behind it, for images in [-1, 1].

    D runs as in a training step (batch statistics, the model's DiffAugment, on copies so the
    model is untouched) but without dropout; the generated images come from the raw generator,
    the one D was trained against, as many as there are training images.
    """
    D = copy.deepcopy(model.discriminator).train()
    G = copy.deepcopy(model.generator).train()
    for module in D.modules():
        if isinstance(module, nn.Dropout):
            module.eval()

    def mean_logit(images: torch.Tensor) -> float:
        logits = [D(model.augment(batch)) for batch in images.split(batch_size)]
        return torch.cat(logits).float().mean().item()

    z = model.sample_noise(len(train), torch.Generator().manual_seed(seed))
    generated = torch.cat([G(batch) for batch in z.split(batch_size)])
    with torch.random.fork_rng(devices=[]):  # DiffAugment's draws, leaving the caller's RNG be
        torch.manual_seed(seed)
        d_train, d_heldout, d_generated = (mean_logit(x) for x in (train, heldout, generated))
    return {
        "r_v": (d_train - d_heldout) / (d_train - d_generated),
        "d_train": d_train,
        "d_heldout": d_heldout,
        "d_generated": d_generated,
    }
