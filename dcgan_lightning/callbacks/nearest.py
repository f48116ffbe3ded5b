"""`plots/nearest.png`: each generated sample beside its nearest training images (memorisation).

A row per fixed-noise sample: the sample, then its nearest images of the real subset the metrics
use, nearest first. Copies show up as a sample whose neighbour is the same picture; the title says
in which space "nearest" was measured (Inception features, or pixels without weights).
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid


def spread_over_classes(labels: torch.Tensor | None, n: int) -> torch.Tensor:
    """Indices of `n` fixed samples: the first n, or for a conditional model (a row per class in
    the sample grid) classes in turn, each class's samples in order."""
    if labels is None:
        return torch.arange(n)
    by_class = [torch.nonzero(labels == c).flatten() for c in labels.unique()]
    rows = [by_class[i % len(by_class)] for i in range(n)]
    picks = [row[(i // len(by_class)) % len(row)] for i, row in enumerate(rows)]
    return torch.stack(picks).cpu()


def draw_nearest(samples: torch.Tensor, neighbours: torch.Tensor, space: str, path: Path) -> Path:
    """uint8 samples (N, C, H, W) and their neighbours (N, K, C, H, W) as an N x (1 + K) grid."""
    k = neighbours.size(1)
    rows = torch.cat([samples.unsqueeze(1), neighbours], dim=1).flatten(0, 1).cpu()
    grid = make_grid(rows, nrow=1 + k, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    width = 1.6 * (1 + k)
    fig = Figure(figsize=(width, width * grid.shape[0] / grid.shape[1] + 0.6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([(i + 0.5) * grid.shape[1] / (1 + k) for i in range(1 + k)])
    ax.set_xticklabels(["sample", *(f"nearest {i + 1}" for i in range(k))], fontsize="small")
    ax.set_yticks([])
    ax.set_title(f"Generated sample, then its {k} nearest training images\n(in {space})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
