"""Class-conditional G and D: G(z, y) and a projection discriminator D(x, y).

The generator takes the class through a learned embedding, either as conditional BatchNorm (each
BatchNorm's scale and shift looked up per class, as in BigGAN/SNGAN-projection) or concatenated to
z (the cGAN of Mirza & Osindero). The discriminator is Miyato & Koyama's projection (2018):
D(x, y) = psi(phi(x)) + <embed(y), phi(x)>, phi(x) the 4x4 features summed over positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from dcgan_lightning.models.discriminator import Discriminator
from dcgan_lightning.models.generator import Generator

CONDITIONINGS = ("cbn", "concat")


class ConditionalBatchNorm2d(nn.Module):
    """An affine-free BatchNorm child, then a per-class scale (init 1) and shift (init 0).

    The normalisation is a child `nn.BatchNorm2d(affine=False)`, not this layer itself: Lightning's
    `trainer.sync_batchnorm` (`SyncBatchNorm.convert_sync_batchnorm`) swaps that child for a
    `SyncBatchNorm` (statistics over every rank) and leaves the class affine here. The DCGAN init
    has no affine weight to draw on the child, and leaves the embeddings as set here."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, affine=False)
        self.scale = nn.Embedding(num_classes, num_features)
        self.shift = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)
        self._register_load_state_dict_pre_hook(_statistics_to_child)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a 4D input, got {x.dim()}D")
        scale, shift = self.scale(y)[:, :, None, None], self.shift(y)[:, :, None, None]
        return self.norm(x) * scale + shift


_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _statistics_to_child(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints from before the child BatchNorm keep its statistics on the layer: move them."""
    for name in _STATISTICS:
        if prefix + name in state_dict:
            state_dict[f"{prefix}norm.{name}"] = state_dict.pop(prefix + name)


class ConditionalGenerator(Generator):
    """(z (B, z_dim), y (B,) int64) -> image. `conditioning`: `cbn` replaces every BatchNorm of
    the DCGAN generator by a `ConditionalBatchNorm2d`; `concat` feeds [z, embed(y)] to it."""

    def __init__(
        self,
        z_dim: int,
        image_size: int,
        channels: int,
        num_classes: int,
        conditioning: str = "cbn",
        embed_dim: int = 32,
        **kwargs,
    ) -> None:
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        extra = embed_dim if conditioning == "concat" else 0
        super().__init__(z_dim + extra, image_size, channels, **kwargs)
        self.z_dim, self.num_classes, self.conditioning = z_dim, num_classes, conditioning
        if conditioning == "concat":
            self.embed = nn.Embedding(num_classes, embed_dim)
            nn.init.normal_(self.embed.weight, 0.0, 1.0)  # on the scale of z
        else:
            for i, layer in enumerate(self.main):
                if isinstance(layer, nn.BatchNorm2d):
                    self.main[i] = ConditionalBatchNorm2d(layer.num_features, num_classes)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.conditioning == "concat":
            return self.main(self.project(torch.cat([z, self.embed(y).to(z.dtype)], 1)))
        x = self.project(z)
        for layer in self.main:
            x = layer(x, y) if isinstance(layer, ConditionalBatchNorm2d) else layer(x)
        return x


class ProjectionDiscriminator(Discriminator):
    """(image, y) -> logits (B,): the DCGAN discriminator's logit psi(phi(x)) plus the inner
    product of a class embedding with phi(x), its last features summed over the 4x4 positions.
    The embedding is spectrally normalised along with the convs under `spectral_norm`."""

    def __init__(self, image_size: int, channels: int, num_classes: int, **kwargs) -> None:
        super().__init__(image_size, channels, **kwargs)
        self.num_classes = num_classes
        self.num_phi_layers = len(self.main) - 2  # the last conv (psi) and the Flatten follow
        embed = nn.Embedding(num_classes, self.main[-2].in_channels)
        nn.init.normal_(embed.weight, 0.0, 0.02)
        self.embed = _spectral_norm(embed) if kwargs.get("spectral_norm") else embed

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for layer in self.main[: self.num_phi_layers]:
            x = layer(x)
        logits = self.main[self.num_phi_layers :](x)
        projection = (self.embed(y).to(x.dtype) * x.sum((2, 3))).sum(1)
        return logits + projection
