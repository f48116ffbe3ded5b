"""Nearest neighbours in feature space, in blocks of rows: 10k x 10k distances never exist at once.

Shared by precision/recall/density/coverage (prdc.py) and the memorisation check: `val/nn_ratio`
and `plots/nearest.png`, whose space is Inception's when weights exist, else downsampled pixels.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

PIXEL_SIZE = 16  # the weights-free space: images averaged down to 16 x 16, flattened
PIXEL_SPACE = f"pixels at {PIXEL_SIZE} px"


def distance_blocks(a: Tensor, b: Tensor, chunk: int) -> Iterator[tuple[slice, Tensor]]:
    """(rows, Euclidean distances from a[rows] to every row of b), `chunk` rows of a at a time."""
    for start in range(0, len(a), chunk):
        rows = slice(start, min(start + chunk, len(a)))
        yield rows, torch.cdist(a[rows].float(), b.float())


def nearest_neighbours(
    queries: Tensor, references: Tensor, k: int, chunk: int = 1024, exclude_self: bool = False
) -> tuple[Tensor, Tensor]:
    """The k nearest references of each query: distances and indices (Q, k), nearest first.

    `exclude_self`: queries are the references themselves; a row is not its own neighbour.
    """
    dists, indices = [], []
    for rows, block in distance_blocks(queries, references, chunk):
        if exclude_self:
            own = torch.arange(rows.start, rows.stop, device=block.device)
            block[own - rows.start, own] = torch.inf
        d, i = block.topk(k, dim=1, largest=False)
        dists.append(d)
        indices.append(i)
    return torch.cat(dists), torch.cat(indices)


def pixel_features(images: Tensor, size: int = PIXEL_SIZE) -> Tensor:
    """uint8 (N, C, H, W) averaged down to `size` px and flattened: a space without weights."""
    small = F.adaptive_avg_pool2d(images.float() / 255, min(size, images.size(-1)))
    return small.flatten(1)


class NearestReal:
    """The real subset in one feature space, and its mean leave-one-out nearest-neighbour
    distance: what generated images are measured against for memorisation."""

    def __init__(self, features: Tensor, chunk: int = 1024) -> None:
        if len(features) < 2:
            raise ValueError("the nearest-neighbour check needs at least 2 real images")
        self.features, self.chunk = features, chunk
        self.leave_one_out = float(self.nearest(features, 1, exclude_self=True)[0].mean())

    def nearest(self, queries: Tensor, k: int, exclude_self: bool = False) -> tuple[Tensor, Tensor]:
        """Distances and indices (into the real subset) of each query's k nearest real images."""
        k = min(k, len(self.features) - int(exclude_self))
        return nearest_neighbours(queries, self.features, k, self.chunk, exclude_self)

    def nn_ratio(self, generated: Tensor) -> float:
        """Mean distance from generated images to their nearest real image, over the real
        images' own leave-one-out mean: below 1, samples sit closer to training images than
        those sit to each other (copying); about 0 for copies."""
        return float(self.nearest(generated, 1)[0].mean()) / max(self.leave_one_out, 1e-12)
