"""Precision and recall (Kynkäänniemi et al. 2019, k=3), density and coverage (Naeem et al. 2020,
k=5) of generated against real features: fidelity and diversity apart, where FID mixes them.

Each real feature gets a ball reaching its k-th nearest real neighbour (and each generated one,
among generated, for recall). Precision: generated features inside some real ball. Recall: real
features inside some generated ball. Density: real balls holding each generated feature, / k, mean
(about 1 when the sets match; above 1 when samples crowd dense real regions). Coverage: real
features whose ball holds a generated one.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.utilities.data import dim_zero_cat

from dcgan_lightning.metrics.keep_real import KeepsRealStates
from dcgan_lightning.metrics.nearest import distance_blocks, nearest_neighbours

K_PRECISION_RECALL, K_DENSITY_COVERAGE = 3, 5


def radii(features: Tensor, ks: tuple[int, ...], chunk: int) -> list[Tensor]:
    """Each feature's distance to its k-th nearest other feature, for every k in `ks`."""
    k_max = min(max(ks), len(features) - 1)
    distances = nearest_neighbours(features, features, k_max, chunk, exclude_self=True)[0]
    return [distances[:, min(k, k_max) - 1] for k in ks]


def prdc(
    real: Tensor,
    fake: Tensor,
    chunk: int = 1024,
    k_pr: int = K_PRECISION_RECALL,
    k_dc: int = K_DENSITY_COVERAGE,
    real_radii: list[Tensor] | None = None,
) -> dict[str, Tensor]:
    """precision, recall, density, coverage; `real_radii` (from `radii(real, (k_pr, k_dc))`)
    may be passed in: the real set rarely changes."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("precision/recall/density/coverage need at least 2 real and 2 fake")
    r_pr, r_dc = real_radii if real_radii is not None else radii(real, (k_pr, k_dc), chunk)
    (f_pr,) = radii(fake, (k_pr,), chunk)
    # One pass over fake-to-real distances, fake rows in blocks; recall and coverage accumulate
    # over the blocks per real column.
    in_real_ball, in_dc_balls = [], []
    in_fake_ball = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    nearest_fake = torch.full((len(real),), torch.inf, device=real.device)
    for rows, d in distance_blocks(fake, real, chunk):
        in_real_ball.append((d <= r_pr).any(dim=1))
        in_dc_balls.append((d <= r_dc).sum(dim=1))
        in_fake_ball |= (d <= f_pr[rows, None]).any(dim=0)
        nearest_fake = torch.minimum(nearest_fake, d.min(dim=0).values)
    k_dc = min(k_dc, len(real) - 1)
    return {
        "precision": torch.cat(in_real_ball).double().mean(),
        "recall": in_fake_ball.double().mean(),
        "density": torch.cat(in_dc_balls).double().mean() / k_dc,
        "coverage": (nearest_fake <= r_dc).double().mean(),
    }


class PRDC(KeepsRealStates):
    """`prdc` as a torchmetrics Metric: every rank's features (gathered at `compute`), the real
    ones and their radii kept across evaluations."""

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, chunk: int = 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chunk = chunk
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")
        self._real_radii: tuple[int, list[Tensor]] | None = None

    def update(self, features: Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(features)

    def compute(self) -> dict[str, Tensor]:
        real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
        if self._real_radii is None or self._real_radii[0] != len(real):
            ks = (K_PRECISION_RECALL, K_DENSITY_COVERAGE)
            self._real_radii = (len(real), radii(real, ks, self.chunk))
        return prdc(real, fake, self.chunk, real_radii=self._real_radii[1])
