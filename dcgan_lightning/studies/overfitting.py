"""r_v (Karras et al. 2020, `metrics.overfitting`) of a trained GAN against a held-out set."""

from __future__ import annotations

import copy

import torch

from dcgan_lightning.metrics.overfitting import discriminator_overfitting as overfitting_of
from dcgan_lightning.models.gan_module import GAN


@torch.no_grad()
def discriminator_overfitting(
    model: GAN, train: torch.Tensor, heldout: torch.Tensor, batch_size: int, seed: int = 0
) -> dict[str, float]:
    """r_v and the mean logits behind it, for images in [-1, 1]; the generated images come from
    the raw generator in training mode (on a copy), the one D was trained against, as many as
    there are training images."""
    G = copy.deepcopy(model.generator).train()
    z = model.sample_noise(len(train), torch.Generator().manual_seed(seed))
    generated = torch.cat([G(batch) for batch in z.split(batch_size)])
    return overfitting_of(model, train, heldout, generated, batch_size, seed)
