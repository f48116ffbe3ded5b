"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, ProGAN, sec. 5).

Needs no pretrained network: runs offline, on any image size from 16 px up, fast on a CPU. Each
pyramid level (full size down to 16 px) contributes 7x7 neighbourhoods; each set's descriptors are
normalised per channel (so global colour offsets and contrast do not count), projected onto fixed
random directions, and compared as sorted 1-D distributions. Values are x1e3, as in ProGAN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.utilities.data import dim_zero_cat

from dcgan_lightning.metrics.keep_real import KeepsRealStates

NHOOD = 7
GOLDEN = (math.sqrt(5) - 1) / 2
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def _blur(x: Tensor, scale: float = 1.0) -> Tensor:
    """5x5 binomial blur with mirrored borders, per channel."""
    c = x.size(1)
    kernel = (torch.outer(_BINOMIAL, _BINOMIAL) * scale).to(x).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=c)


def pyr_down(x: Tensor) -> Tensor:
    """Gaussian blur, then every other pixel: half the resolution."""
    return _blur(x)[..., ::2, ::2]


def pyr_up(x: Tensor) -> Tensor:
    """Zero-stuff to twice the resolution, then blur (x4 restores the brightness)."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[..., ::2, ::2] = x
    return _blur(up, 4.0)


def pyramid_resolutions(image_size: int, min_resolution: int = 16) -> list[int]:
    """Full size, half, ... down to `min_resolution` (or the image size when smaller)."""
    if image_size < NHOOD:
        raise ValueError(f"SWD needs images of at least {NHOOD} px, got {image_size}")
    sizes = [image_size]
    while sizes[-1] // 2 >= min(min_resolution, image_size) and sizes[-1] % 2 == 0:
        sizes.append(sizes[-1] // 2)
    return sizes


def laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """Band-pass levels, full resolution first; the last level is the low-pass residual."""
    out = []
    for _ in range(levels - 1):
        down = pyr_down(x)
        out.append(x - pyr_up(down))
        x = down
    out.append(x)
    return out


_hash_weights: dict[tuple[int, torch.device], Tensor] = {}


def _image_offsets(images: Tensor) -> Tensor:
    """A number in [0, 1) per image from its pixels: patch positions depend on the image only.

    So an image yields the same patches on any rank and in any batch: the value with N processes
    equals the single-process one, and identical sets give exactly 0.
    """
    flat = images.flatten(1).long()
    key = (flat.size(1), flat.device)
    if key not in _hash_weights:
        weights = torch.randint(
            1, 1 << 16, (flat.size(1),), generator=torch.Generator().manual_seed(0)
        )
        _hash_weights[key] = weights.to(flat.device)
    h = (flat * _hash_weights[key]).sum(1) % 2_147_483_647  # exact integer arithmetic
    return torch.frac(h.double() * GOLDEN)


def patch_descriptors(images: Tensor, resolutions: list[int], per_image: int) -> list[Tensor]:
    """(N * per_image, C, 7, 7) neighbourhoods per pyramid level, from uint8 (N, C, H, W) images.

    Positions follow a golden-ratio sequence from the image's own offset: spread over the image,
    never the same twice while per_image is below the number of positions.
    """
    offsets = _image_offsets(images)[:, None]
    steps = torch.arange(1, per_image + 1, device=images.device, dtype=torch.float64) * GOLDEN
    levels = laplacian_pyramid(images.float() / 255, len(resolutions))
    rows = torch.arange(images.size(0), device=images.device)[:, None]
    out = []
    for level in levels:
        width = level.size(-1) - NHOOD + 1
        positions = (torch.frac(offsets + steps) * (level.size(-2) - NHOOD + 1) * width).long()
        windows = level.unfold(2, NHOOD, 1).unfold(3, NHOOD, 1)  # N, C, H', W', 7, 7 (a view)
        patches = windows[rows, :, positions // width, positions % width]  # N, K, C, 7, 7
        out.append(patches.reshape(-1, *patches.shape[2:]))
    return out


def normalise(descriptors: Tensor) -> Tensor:
    """Zero mean, unit variance per channel over the whole set; flattened to (M, C * 49)."""
    mean = descriptors.mean(dim=(0, 2, 3), keepdim=True)
    std = descriptors.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return ((descriptors - mean) / std).flatten(1)


def _quantiles(sorted_rows: Tensor, n: int) -> Tensor:
    """n evenly spaced order statistics of each row: compares sets of different sizes."""
    if sorted_rows.size(1) == n:
        return sorted_rows
    index = torch.linspace(0, sorted_rows.size(1) - 1, n, device=sorted_rows.device)
    return sorted_rows[:, index.round().long()]


def sliced_wasserstein(a: Tensor, b: Tensor, directions: Tensor, chunk: int = 128) -> Tensor:
    """Mean over `directions` (D, K) of the 1-D Wasserstein-1 distance between projections."""
    n = min(a.size(0), b.size(0))
    total = a.new_zeros(())
    for start in range(0, directions.size(1), chunk):
        d = directions[:, start : start + chunk].T  # (chunk, D): sorting along rows is faster
        pa = _quantiles((d @ a.T).sort(dim=1).values, n)
        pb = _quantiles((d @ b.T).sort(dim=1).values, n)
        total += (pa - pb).abs().mean(dim=1).sum()
    return total / directions.size(1)


def random_directions(dim: int, count: int, seed: int, device: torch.device) -> Tensor:
    """Unit vectors (dim, count), the same on every rank and at every evaluation."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(dim, count, generator=gen)
    return (d / d.norm(dim=0, keepdim=True)).to(device)


class SlicedWassersteinDistance(KeepsRealStates):
    """SWD between real and generated images per pyramid level, and the mean ("swd").

    `update(images, real)` takes uint8 (N, C, H, W). Descriptors are gathered across ranks (cat)
    at `compute`; real ones survive `reset`, so the real set is described once per run.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        image_size: int,
        patches_per_image: int = 128,
        num_directions: int = 512,
        min_resolution: int = 16,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if patches_per_image < 1 or num_directions < 1:
            raise ValueError("patches_per_image and num_directions must be positive")
        self.resolutions = pyramid_resolutions(image_size, min_resolution)
        self.patches_per_image, self.num_directions, self.seed = (
            patches_per_image,
            num_directions,
            seed,
        )
        for res in self.resolutions:
            self.add_state(f"real_{res}", default=[], dist_reduce_fx="cat")
            self.add_state(f"fake_{res}", default=[], dist_reduce_fx="cat")

    def update(self, images: Tensor, real: bool) -> None:
        side = "real" if real else "fake"
        descriptors = patch_descriptors(images, self.resolutions, self.patches_per_image)
        for res, desc in zip(self.resolutions, descriptors):
            getattr(self, f"{side}_{res}").append(desc)

    def compute(self) -> dict[str, Tensor]:
        values = {}
        for res in self.resolutions:
            a = normalise(dim_zero_cat(getattr(self, f"real_{res}")))
            b = normalise(dim_zero_cat(getattr(self, f"fake_{res}")))
            dirs = random_directions(a.size(1), self.num_directions, self.seed + res, a.device)
            values[f"swd_{res}px"] = sliced_wasserstein(a, b, dirs) * 1e3
        values["swd"] = torch.stack(list(values.values())).mean()
        return values
