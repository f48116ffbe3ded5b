"""Metrics per class of a conditional GAN (`val/<metric>/<class>`) and their mean
(`val/<metric>_class_mean`): SWD from the images; FID and KID ("intra-FID", Miyato & Koyama 2018)
from the Inception features the overall metrics computed, with no second pass.

Generated images carry the classes of the real batch they are drawn beside (`GAN.validation_step`),
so each class compares as many real as generated images. Every class's state is updated at every
batch, with no image when the batch has none of it: under DDP each rank then holds a state for
every class, as the gather at `compute` needs. A class with fewer than 2 real or 2 generated
images (over all ranks) gives no value, on every rank alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

ImageMetric = Callable[[], Metric]  # builds one class's metric of uint8 images (SWD)
FeatureScore = Callable[[Tensor, Tensor], float]  # (real, generated features) -> value (FID, KID)


class FeatureSets(Metric):
    """A class's real and generated features, gathered over ranks at `compute`. The real ones
    survive `reset`: the real set is seen (or loaded from a cache) once per run."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("real", [], dist_reduce_fx="cat")
        self.add_state("fake", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        (self.real if real else self.fake).append(features)

    def compute(self) -> tuple[Tensor, Tensor]:
        return dim_zero_cat(self.real), dim_zero_cat(self.fake)

    def reset(self) -> None:
        real = list(self.real)  # torchmetrics clears list states in place
        super().reset()
        self.real.extend(real)

    def _sync_dist(self, *args, **kwargs) -> None:
        # One tensor per state first: torchmetrics gathers a list one element at a time, and ranks
        # that saw different numbers of batches would wait in different collectives.
        for name in ("real", "fake"):
            state = getattr(self, name)
            if len(state) > 1:
                state[:] = [torch.cat(state)]
        super()._sync_dist(*args, **kwargs)


class PerClassMetrics(nn.Module):
    """Per class: one metric of each of `image_metrics`, and its features for `feature_scores`."""

    def __init__(
        self,
        class_names: list[str],
        image_metrics: dict[str, ImageMetric],
        feature_scores: dict[str, FeatureScore],
    ) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.image_metrics = nn.ModuleDict(
            {
                name: nn.ModuleList(build() for _ in self.class_names)
                for name, build in image_metrics.items()
            }
        )
        self.feature_scores = feature_scores
        self.features = (
            nn.ModuleList(FeatureSets() for _ in self.class_names) if feature_scores else None
        )
        self.register_buffer("counts", torch.zeros(2, len(self.class_names), dtype=torch.int64))

    def update_images(self, images: Tensor, labels: Tensor, real: bool) -> None:
        """uint8 images of classes `labels`: every image metric, and the class counts."""
        for per_class in self.image_metrics.values():
            for c, metric in enumerate(per_class):
                metric.update(images[labels == c], real=real)
        self.counts[int(real)] += torch.bincount(labels, minlength=len(self.class_names))

    def update_features(self, features: Tensor, labels: Tensor, real: bool) -> None:
        """Features of those images (or cached real ones, with their classes)."""
        if self.features is not None:
            for c, sets in enumerate(self.features):
                sets.update(features[labels == c], real=real)

    def compute(self) -> dict[str, float]:
        """`<metric>/<class>` and `<metric>_class_mean`. Collective: all ranks call it, all get the
        same values."""
        counts = self.counts.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        enough = (counts >= 2).all(0).tolist()  # [generated, real] per class
        per_class: dict[str, dict[str, float]] = {}
        for name, metrics in self.image_metrics.items():
            per_class[name] = {
                c: float(m.compute()[name])
                for c, m, ok in zip(self.class_names, metrics, enough)
                if ok
            }
        if self.features is not None:
            for name in self.feature_scores:
                per_class[name] = {}
            for c, sets, ok in zip(self.class_names, self.features, enough):
                if ok:
                    real, fake = sets.compute()
                    for name, score in self.feature_scores.items():
                        per_class[name][c] = score(real, fake)
        values: dict[str, float] = {}
        for name, by_class in per_class.items():
            if by_class:
                values |= {f"{name}/{c}": v for c, v in by_class.items()}
                values[f"{name}_class_mean"] = sum(by_class.values()) / len(by_class)
        return values

    def reset(self) -> None:
        """Forget the generated images; real statistics stay."""
        for metrics in self.image_metrics.values():
            for metric in metrics:
                metric.reset()
        for sets in self.features or ():
            sets.reset()
        self.counts[0].zero_()
