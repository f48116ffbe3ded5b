"""DCGAN discriminator: strided convs down to 4x4, one logit per image."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from dcgan_lightning.models.generator import channel_schedule


class Discriminator(nn.Module):
    """image (B, channels, H, W) -> logits (B,). No sigmoid: losses take logits.

    BatchNorm on every layer but the first, as in Radford et al.; with `spectral_norm` every conv is
    spectrally normalised instead and BatchNorm is dropped (Miyato et al. 2018).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        features: int = 64,
        dropout: float = 0.0,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        widths = channel_schedule(image_size, features)[::-1]  # image_size/2 ... 4x4

        def conv(c_in: int, c_out: int, *args: int) -> nn.Module:
            # Biases only where no BatchNorm follows to cancel them: every conv under spectral
            # norm; without it none, as in pytorch/examples.
            layer = nn.Conv2d(c_in, c_out, *args, bias=spectral_norm)
            return _spectral_norm(layer) if spectral_norm else layer

        def act() -> list[nn.Module]:
            return [nn.LeakyReLU(0.2, inplace=True)] + ([nn.Dropout(dropout)] if dropout else [])

        layers: list[nn.Module] = [conv(channels, widths[0], 4, 2, 1), *act()]
        for c_in, c_out in pairwise(widths):
            norm = [] if spectral_norm else [nn.BatchNorm2d(c_out)]
            layers += [conv(c_in, c_out, 4, 2, 1), *norm, *act()]
        layers += [conv(widths[-1], 1, 4, 1, 0), nn.Flatten(0)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
