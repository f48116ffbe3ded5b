"""z for generation: the training noise law, one row at a time, optionally truncated.

Truncation (the "truncation trick", Brock et al. 2019) trades variety for fidelity: z is kept
near the centre of the noise law, where G was trained most. Normal z: components beyond +/-psi
are redrawn until inside (a truncated normal); uniform z: scaled by psi into [-psi, psi].
"""

from __future__ import annotations

import torch

NOISES = ("normal", "uniform")


def check_truncation(psi: object, noise: str) -> None:
    """Refuse a truncation that is not a positive number, or one that would leave U(-1, 1)."""
    if psi is None:
        return
    if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not psi > 0:
        raise ValueError(
            f"truncation must be a number > 0 (e.g. 0.7; smaller: less varied, more typical "
            f"images) or null for none, got {psi!r}"
        )
    if noise == "uniform" and psi > 1:
        raise ValueError(
            f"truncation={psi} would scale U(-1, 1) noise beyond what the generator was trained "
            "on: use a value in (0, 1]"
        )


def draw_noise(
    n: int,
    z_dim: int,
    noise: str,
    generator: torch.Generator | None = None,
    truncation: float | None = None,
) -> torch.Tensor:
    """(n, z_dim) on the generator's device (the CPU without one); row i is the i-th row drawn.

    Rows are drawn one after another, redraws included, so row i of a seed is the same whatever
    `n` the draws are split into. Components already inside +/-psi keep their untruncated value.
    """
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    check_truncation(truncation, noise)
    device = generator.device if generator is not None else torch.device("cpu")
    if noise == "uniform":
        rows = [torch.rand((1, z_dim), generator=generator, device=device) for _ in range(n)]
        z = torch.cat(rows) * 2 - 1 if rows else torch.empty(0, z_dim, device=device)
        return z if truncation is None else z * truncation
    rows = []
    for _ in range(n):
        row = torch.randn((1, z_dim), generator=generator, device=device)
        if truncation is not None:
            outside = row.abs() > truncation
            while outside.any():
                redraw = torch.randn(int(outside.sum()), generator=generator, device=device)
                row[outside] = redraw
                outside = row.abs() > truncation
        rows.append(row)
    return torch.cat(rows) if rows else torch.empty(0, z_dim, device=device)
