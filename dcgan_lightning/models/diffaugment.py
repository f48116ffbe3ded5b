"""DiffAugment (Zhao et al. 2020): differentiable augmentation of every image D sees.

Applied to real and fake images alike, in both the D and the G step, so that D cannot memorise a
small training set while G still receives gradients through the augmentation. Each op can be
applied per image with a probability p (ADA, Karras et al. 2020: see `models/ada.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

Params = tuple[torch.Tensor, ...]


class _Op(NamedTuple):
    """An op split in two: `sample` draws its per-image random parameters, `apply` uses them.

    Drawing every op's parameters before any masks keeps the global RNG stream of the unmasked
    augmentation, so p = 1 gives exactly the images of plain DiffAugment.
    """

    sample: Callable[[torch.Tensor], Params]
    apply: Callable[..., torch.Tensor]


def _color_params(x: torch.Tensor) -> Params:
    """Brightness shift, saturation and contrast factors, one each per image."""
    n = x.size(0)
    return tuple(torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) for _ in range(3))


def _color(
    x: torch.Tensor, brightness: torch.Tensor, saturation: torch.Tensor, contrast: torch.Tensor
) -> torch.Tensor:
    x = x + (brightness - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (saturation * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (contrast + 0.5) + mean


TRANSLATION_RATIO = 0.125  # the largest shift, as a fraction of the image size
CUTOUT_RATIO = 0.5  # the square's side, as a fraction of the image's


def _translation_params(x: torch.Tensor) -> Params:
    """Shifts of up to `TRANSLATION_RATIO` of the image size, per image."""
    n, _, h, w = x.shape
    max_dy, max_dx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (n, 1, 1), device=x.device)
    return dy, dx


def _translation(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift each image by (dy, dx), filling with zeros."""
    n, _, h, w = x.shape
    ys = torch.arange(h, device=x.device).view(1, h, 1) + dy
    xs = torch.arange(w, device=x.device).view(1, 1, w) + dx
    padded = F.pad(x, (1, 1, 1, 1))  # out-of-range indices land on the zero border
    ys = ys.clamp(-1, h).add(1).expand(n, h, w)
    xs = xs.clamp(-1, w).add(1).expand(n, h, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, h, w)
    return padded.permute(0, 2, 3, 1)[batch, ys, xs].permute(0, 3, 1, 2)


def _cutout_params(x: torch.Tensor) -> Params:
    """The centre of each image's square."""
    n, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    return cy, cx


def _cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Zero one square of `CUTOUT_RATIO` times the image size per image, centred at (cy, cx)."""
    _, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    top, left = cy - ch // 2, cx - cw // 2  # the square may hang over the border
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPS = {
    "color": _Op(_color_params, _color),
    "translation": _Op(_translation_params, _translation),
    "cutout": _Op(_cutout_params, _cutout),
}


class DiffAugment(nn.Module):
    """Applies the ops of `policy` in order (of color, translation, cutout); [] is the identity."""

    def __init__(self, policy: Sequence[str] = ()) -> None:
        super().__init__()
        if isinstance(policy, str):
            raise TypeError(f"policy is a list of op names, e.g. {list(_OPS)}, not {policy!r}")
        self.ops = list(policy)
        unknown = set(self.ops) - set(_OPS)
        if unknown:
            raise ValueError(
                f"unknown DiffAugment ops {sorted(unknown)}; choose from {sorted(_OPS)}"
            )

    def forward(self, x: torch.Tensor, p: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Each op applied to each image with probability `p`, drawn per op and image.

        `p` is a float, or a 0-dim tensor that is never read on the host (no device sync).
        A float 1 (the default) draws no masks: the exact images and RNG stream of plain
        DiffAugment. Images an op skips pass through it unchanged, bit for bit.
        """
        if isinstance(p, (int, float)):
            if not 0 <= p <= 1:
                raise ValueError(f"p is a probability in [0, 1], got {p}")
            if p == 0:
                return x
        if not self.ops:
            return x
        ops = [_OPS[name] for name in self.ops]
        params = [op.sample(x) for op in ops]
        masks = None
        if not (isinstance(p, (int, float)) and p == 1):
            masks = torch.rand(len(ops), x.size(0), 1, 1, 1, device=x.device) < p
        for i, (op, op_params) in enumerate(zip(ops, params)):
            y = op.apply(x, *op_params)
            x = y if masks is None else torch.where(masks[i], y, x)
        return x
