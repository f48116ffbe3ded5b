"""DCGAN generators: the Radford et al. transposed-conv stack, or upsample + conv."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn


def channel_schedule(image_size: int, features: int) -> list[int]:
    """Feature widths from the 4x4 stage up to the last hidden stage.

    Doubling per halving of resolution, as in pytorch/examples, capped at 8x `features` so that
    128 and 256 px models stay the size of the classic 64 px one at their coarse end.
    """
    if image_size < 32 or image_size > 256 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two in [32, 256], got {image_size}")
    n_stages = int(math.log2(image_size)) - 2  # 4x4 ... image_size/2
    return [features * min(2 ** (n_stages - 1 - i), 8) for i in range(n_stages)]


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2, inplace=True)
    raise ValueError(f"activation must be 'relu' or 'leaky_relu', got {name!r}")


def _up(arch: str, c_in: int, c_out: int) -> list[nn.Module]:
    """One 2x upsampling layer (no normalisation, no activation)."""
    if arch == "convtranspose":
        return [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
    if arch == "upsample":
        return [
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
        ]
    raise ValueError(f"arch must be 'convtranspose' or 'upsample', got {arch!r}")


class Generator(nn.Module):
    """z (B, z_dim) -> image (B, channels, image_size, image_size) in [-1, 1]."""

    def __init__(
        self,
        z_dim: int,
        image_size: int,
        channels: int,
        arch: str = "convtranspose",
        features: int = 64,
        activation: str = "relu",
        linear_projection: bool = False,
    ) -> None:
        super().__init__()
        if z_dim <= 0:
            raise ValueError(f"z_dim must be positive, got {z_dim}")
        widths = channel_schedule(image_size, features)
        self.z_dim = z_dim
        if linear_projection:
            self.project = nn.Sequential(
                nn.Linear(z_dim, widths[0] * 16, bias=False),
                nn.Unflatten(1, (widths[0], 4, 4)),
            )
        else:
            self.project = nn.Sequential(
                nn.Unflatten(1, (z_dim, 1, 1)),
                nn.ConvTranspose2d(z_dim, widths[0], 4, 1, 0, bias=False),
            )
        layers: list[nn.Module] = [nn.BatchNorm2d(widths[0]), _activation(activation)]
        for c_in, c_out in pairwise(widths):
            layers += [*_up(arch, c_in, c_out), nn.BatchNorm2d(c_out), _activation(activation)]
        layers += [*_up(arch, widths[-1], channels), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(self.project(z))
