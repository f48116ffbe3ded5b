"""Paths through latent space: linear and spherical interpolation between z vectors."""

from __future__ import annotations

from itertools import pairwise

import torch

METHODS = ("linear", "slerp")


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Points (len(t), z_dim) on the straight line; exactly z0 at t=0 and z1 at t=1."""
    t = t[:, None]
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Points on the great arc from z0 to z1.

    Gaussian z concentrate near a sphere of radius sqrt(z_dim); the straight line between two of
    them passes through the less likely interior, the arc does not (White, "Sampling Generative
    Networks", 2016). Falls back to `lerp` for (anti)parallel vectors.
    """
    cos = torch.dot(z0 / z0.norm(), z1 / z1.norm()).clamp(-1, 1)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    if sin.abs() < 1e-6:
        return lerp(z0, z1, t)
    t = t[:, None]
    return (torch.sin((1 - t) * omega) / sin) * z0 + (torch.sin(t * omega) / sin) * z1


def latent_walk(anchors: torch.Tensor, steps: int, method: str) -> torch.Tensor:
    """(len(anchors) - 1, steps, z_dim): one row per pair of consecutive anchors, ends included."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if len(anchors) < 2 or steps < 2:
        raise ValueError("a latent walk needs at least 2 anchors and 2 steps")
    interpolate = lerp if method == "linear" else slerp
    t = torch.linspace(0, 1, steps, dtype=anchors.dtype, device=anchors.device)
    return torch.stack([interpolate(a, b, t) for a, b in pairwise(anchors)])
