"""SWD per class of a conditional GAN (val/swd/<class>) and their mean (val/swd_class_mean).

Generated images carry the classes of the real batch they are drawn beside (`GAN.validation_step`),
so each class compares as many real as generated images. Every class's metric is updated at every
batch, with no image when the batch has none of it: under DDP each rank then holds a state for
every class, as the gather at `compute` needs. A class with fewer than 2 images gives no value.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dcgan_lightning.metrics.swd import SlicedWassersteinDistance


class PerClassSWD(nn.Module):
    """One `SlicedWassersteinDistance` per class name; `update` takes uint8 images and labels."""

    def __init__(self, class_names: list[str], image_size: int, **swd_kwargs) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.metrics = nn.ModuleList(
            SlicedWassersteinDistance(image_size, **swd_kwargs) for _ in self.class_names
        )

    def update(self, images: Tensor, labels: Tensor, real: bool) -> None:
        for c, metric in enumerate(self.metrics):
            metric.update(images[labels == c], real=real)

    def compute(self) -> dict[str, Tensor]:
        """`swd/<class>` for every class with values, and `swd_class_mean` of them. Collective."""
        values = {}
        for name, metric in zip(self.class_names, self.metrics):
            swd = metric.compute()["swd"]
            if torch.isfinite(swd):  # equal on every rank: computed from the gathered sets
                values[f"swd/{name}"] = swd
        if values:
            values["swd_class_mean"] = torch.stack(list(values.values())).mean()
        return values

    def reset(self) -> None:
        for metric in self.metrics:
            metric.reset()
