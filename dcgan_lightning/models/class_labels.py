"""The classes of a conditional GAN: its nets, the fake labels each step draws, the grid's rows."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dcgan_lightning.errors import UserError
from dcgan_lightning.models.conditional import ConditionalGenerator, ProjectionDiscriminator

FAKE_LABELS = ("data", "uniform")
MAX_GRID_ROWS = 16  # more classes: an evenly spaced, fixed subset of them gets a row
MAX_GRID_COLUMNS = 16


class ClassLabels(nn.Module):
    """`model.conditional`: how G takes the class (`generator`: cbn | concat, `embed_dim` for
    concat) and how fake labels are drawn (`fake_labels`: `data`, the training set's class
    frequencies, or `uniform`). The frequencies are a buffer: saved, restored, equal on all ranks.
    """

    def __init__(
        self,
        num_classes: int,
        generator: str = "cbn",
        embed_dim: int = 32,
        fake_labels: str = "data",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise UserError(
                f"model.conditional needs labelled data with 2 or more classes, got {num_classes}: "
                "set data.labels=true"
            )
        if fake_labels not in FAKE_LABELS:
            raise ValueError(f"fake_labels must be one of {FAKE_LABELS}, got {fake_labels!r}")
        self.num_classes, self.conditioning, self.embed_dim = num_classes, generator, embed_dim
        self.fake_labels = fake_labels
        self.names = [str(i) for i in range(num_classes)]  # the datamodule's, from `use_data`
        self.counts: list[int] = []
        self.register_buffer("probs", torch.full((num_classes,), 1.0 / num_classes))

    def nets(
        self,
        z_dim: int,
        image_size: int,
        channels: int,
        generator: dict[str, Any],
        discriminator: dict[str, Any],
    ) -> tuple[ConditionalGenerator, ProjectionDiscriminator]:
        g = ConditionalGenerator(z_dim, image_size, channels, self.num_classes, self.conditioning,
                                 self.embed_dim, **generator)  # fmt: skip
        return g, ProjectionDiscriminator(image_size, channels, self.num_classes, **discriminator)

    def use_data(self, names: list[str], counts: list[int]) -> None:
        """Take the datamodule's class names and, for `data` fake labels, its frequencies."""
        if len(names) != self.num_classes:
            raise UserError(f"the model has {self.num_classes} classes, the data {len(names)}")
        self.names, self.counts = list(names), list(counts)
        if self.fake_labels == "data":
            freq = torch.tensor(counts, dtype=torch.float32)
            self.probs.copy_(freq / freq.sum())

    def describe(self) -> dict[str, list]:
        """What checkpoints keep: names (index order) and training images per class."""
        return {"names": self.names, "counts": self.counts}

    def sample(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """n labels (int64) on `rng`'s device, without a host sync: inverse CDF of `probs`."""
        if self.fake_labels == "uniform":
            return torch.randint(self.num_classes, (n,), generator=rng, device=rng.device)
        u = torch.rand(n, generator=rng, device=rng.device)
        cdf = self.probs.to(rng.device).cumsum(0)
        return torch.searchsorted(cdf, u, right=True).clamp_(max=self.num_classes - 1)

    def grid_classes(self) -> torch.Tensor:
        """The classes that get a sample-grid row: all, or an evenly spaced fixed subset."""
        rows = min(self.num_classes, MAX_GRID_ROWS)
        return torch.linspace(0, self.num_classes - 1, rows).round().long()

    def grid_columns(self, n: int) -> int:
        """Images per row of a grid of `n` fixed samples (see `grid`)."""
        return n // len(self.grid_classes())

    def grid(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed noise and labels for a grid of a row per class, each row the same z's."""
        classes = self.grid_classes()
        columns = max(1, min(MAX_GRID_COLUMNS, len(z) // len(classes)))
        return z[:columns].repeat(len(classes), 1), classes.repeat_interleave(columns)
