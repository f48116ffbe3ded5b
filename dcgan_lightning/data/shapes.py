"""The embedded default dataset: coloured circles, squares and triangles, drawn from a seed."""

from __future__ import annotations

import colorsys
import random

import numpy as np
import torch
from PIL import Image, ImageDraw

from dcgan_lightning.data.base import ImageDataModule

SUPERSAMPLE = 4  # draw large, then downscale: smooth edges without a dependency
SHAPES = ("circle", "square", "triangle")  # the classes with `data.labels=true`, in this order


def _colour(rng: random.Random, lightness: tuple[float, float]) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb(rng.random(), rng.uniform(*lightness), rng.uniform(0.6, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def draw_shape(rng: random.Random, size: int) -> Image.Image:
    """One image: a dark plain background and one bright circle, square or triangle."""
    return draw_labelled_shape(rng, size)[0]


def draw_labelled_shape(rng: random.Random, size: int) -> tuple[Image.Image, int]:
    """`draw_shape`'s image and its shape's index in `SHAPES` (the same draws from `rng`)."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), _colour(rng, (0.05, 0.25)))
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.18, 0.38) * big  # half the shape's extent
    cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
    fill = _colour(rng, (0.5, 0.75))
    kind = rng.choice(SHAPES)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(((cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)), fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS), SHAPES.index(kind)


class ShapesDataModule(ImageDataModule):
    """`num_images` images made deterministically from `seed`: no download, no files. Labelled
    (`labels=True`) by their shape."""

    def __init__(self, num_images: int = 8192, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_images, self.seed = num_images, seed
        self._shapes: list[int] = []

    def list_classes(self) -> list[str]:
        return list(SHAPES)

    def load_labels(self) -> torch.Tensor:
        return torch.tensor(self._shapes, dtype=torch.int64)

    @property
    def fingerprint(self) -> str:
        return f"shapes-n{self.num_images}-seed{self.seed}-{self.image_size}px-c{self.channels}"

    def load_images(self) -> torch.Tensor:
        rng = random.Random(self.seed)
        mode = "L" if self.channels == 1 else "RGB"
        size = self.image_size
        drawn = [draw_labelled_shape(rng, size) for _ in range(self.num_images)]
        self._shapes = [shape for _, shape in drawn]
        arrays = [np.asarray(image.convert(mode)) for image, _ in drawn]
        images = torch.from_numpy(np.stack(arrays))
        if self.channels == 1:
            return images.unsqueeze(1)
        return images.permute(0, 3, 1, 2).contiguous()
