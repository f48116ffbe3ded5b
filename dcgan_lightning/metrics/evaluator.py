"""FID, KID, MiFID and SWD of generated against real images, reduced across ranks (torchmetrics)."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd
from torchmetrics.image.mifid import MemorizationInformedFrechetInceptionDistance
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from dcgan_lightning.metrics.nearest import PIXEL_SPACE, NearestReal, pixel_features
from dcgan_lightning.metrics.per_class import PerClassMetrics
from dcgan_lightning.metrics.prdc import PRDC
from dcgan_lightning.metrics.swd import SlicedWassersteinDistance

FEATURE_METRICS = ("fid", "kid", "mifid", "prdc")


class Features(nn.Identity):
    """The metrics' "feature network": features arrive computed, once per image, shared by all."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features


class FID(FrechetInceptionDistance):
    """torchmetrics' FID, its trace term from a symmetric eigenproblem.

    With S_r = F F^T (Cholesky, or the symmetric square root when S_r is singular, as it is under
    2,048 real images), tr sqrt(S_r S_f) is the sum of the square roots of the eigenvalues of the
    symmetric F^T S_f F: the same value as torchmetrics' general `eigvals(S_r @ S_f)`, which takes
    ~55 s for 2048 features on a 2-core CPU, against ~2 s. F is kept: real statistics do not
    change within a run.
    """

    _real_factor: tuple[int, Tensor] | None = None

    def compute(self) -> Tensor:
        n_real, n_fake = int(self.real_features_num_samples), int(self.fake_features_num_samples)
        if n_real < 2 or n_fake < 2:
            raise RuntimeError("FID needs at least 2 real and 2 generated images")
        mean_real, cov_real = _mean_cov(self.real_features_sum, self.real_features_cov_sum, n_real)
        mean_fake, cov_fake = _mean_cov(self.fake_features_sum, self.fake_features_cov_sum, n_fake)
        if self._real_factor is None or self._real_factor[0] != n_real:
            self._real_factor = (n_real, _factor(cov_real))
        factor = self._real_factor[1]
        return _frechet(mean_real, cov_real, mean_fake, cov_fake, factor).to(self.orig_dtype)


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID of two feature sets (N, D), in float64 as `FID`'s states; at least 2 rows each."""
    real, fake = real.double(), fake.double()
    mean_real, cov_real = _mean_cov(real.sum(0), real.T @ real, len(real))
    mean_fake, cov_fake = _mean_cov(fake.sum(0), fake.T @ fake, len(fake))
    return float(_frechet(mean_real, cov_real, mean_fake, cov_fake, _factor(cov_real)))


def _frechet(
    mean_real: Tensor, cov_real: Tensor, mean_fake: Tensor, cov_fake: Tensor, factor: Tensor
) -> Tensor:
    """|mu_r - mu_f|^2 + tr S_r + tr S_f - 2 tr sqrt(S_r S_f), with F F^T = S_r."""
    eigenvalues = torch.linalg.eigvalsh(factor.T @ cov_fake @ factor)
    trace_sqrt = eigenvalues.clamp_min(0).sqrt().sum()
    distance = (mean_real - mean_fake).square().sum() + cov_real.trace() + cov_fake.trace()
    return distance - 2 * trace_sqrt


def _factor(cov: Tensor) -> Tensor:
    """F with F F^T = cov: Cholesky when positive definite, else the symmetric square root."""
    lower, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        return lower
    values, vectors = torch.linalg.eigh(cov)
    return vectors * values.clamp_min(0).sqrt() @ vectors.T


def _mean_cov(total: Tensor, outer_total: Tensor, n: int) -> tuple[Tensor, Tensor]:
    mean = total / n
    return mean, (outer_total - n * torch.outer(mean, mean)) / (n - 1)


class KID(KernelInceptionDistance):
    """torchmetrics' KID, its subsets drawn from a private generator, their size capped.

    Seeded, so curves do not jitter from subset draws; private, so an evaluation neither draws
    from nor reseeds the training's generators (`torch.manual_seed` would reseed every CUDA one).
    The subset size shrinks to half the sample counts instead of raising (`kernel_distance`).
    """

    seed = 0

    def compute(self) -> tuple[Tensor, Tensor]:
        real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
        return kernel_distance(
            real,
            fake,
            self.subsets,
            self.subset_size,
            self.seed,
            self.degree,
            self.gamma,
            self.coef,
        )


def kernel_distance(
    real: Tensor,
    fake: Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KID (mean, std over subsets) of two feature sets: torchmetrics' compute, with its subsets
    drawn from a private generator seeded with `seed`, of at most half the smaller set.

    Half, so subsets differ: capped at the set size (as StyleGAN2-ADA's KID is), every subset of a
    set under `subset_size` is the whole set reordered, 100 equal unbiased MMD estimates and a
    std of ~0. The mean stays an unbiased estimate; the std is the spread at that subset size.
    """
    size = min(subset_size, max(2, min(len(real), len(fake)) // 2))
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        f_real = real[torch.randperm(len(real), generator=generator)[:size].to(real.device)]
        f_fake = fake[torch.randperm(len(fake), generator=generator)[:size].to(fake.device)]
        scores.append(poly_mmd(f_real, f_fake, degree, gamma, coef))
    stacked = torch.stack(scores)
    return stacked.mean(), stacked.std(unbiased=False)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _one_tensor_per_list_state(metric: Metric) -> None:
    """Concatenate KID/MiFID's per-update feature lists in place before syncing.

    torchmetrics gathers such states one list element at a time: ranks that saw different numbers
    of batches would issue different numbers of collectives and hang or crash.
    """
    for name, default in metric._defaults.items():
        value = getattr(metric, name)
        if isinstance(default, list) and len(value) > 1:
            value[:] = [torch.cat(value)]


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats to uint8 [0, 255], rounded as when the images are saved as PNG."""
    return images.add(1).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


def _gather_in_dataset_order(local: list[Tensor]) -> Tensor:
    """Every rank's rows in dataset order: rank r holds rows r, r + W, ... (the val sampler's
    split). Collective under DDP."""
    mine = torch.cat(local)
    parts = gather_all_tensors(mine) if _distributed() else [mine]
    full = mine.new_empty(sum(len(p) for p in parts), mine.size(1))
    for rank, part in enumerate(parts):
        full[rank :: len(parts)] = part
    return full


class QualityEvaluator(nn.Module):
    """Accumulates real and generated uint8 images; `compute` returns every enabled metric.

    One `extractor` forward per image feeds FID, KID, MiFID and precision/recall/density/coverage
    alike (`extractor` maps uint8 (N, 3, H, W) to (N, D) features; Inception v3 for the published
    metrics). `nearest` adds `nn_ratio`, the memorisation check, in the extractor's space or,
    without one, in downsampled pixels (`nn_space`). `class_names` (a conditional model) adds SWD,
    FID and KID per class from the same images and features, when `update` is given labels. Real
    statistics survive `reset`: the real set is seen (or loaded) once per run. Under DDP `compute`
    is a collective call: every rank must make it.
    """

    def __init__(
        self,
        image_size: int,
        extractor: nn.Module | None = None,
        num_features: int = 2048,
        feature_metrics: tuple[str, ...] = ("fid", "kid"),
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        swd: bool = True,
        swd_patches_per_image: int = 128,
        swd_directions: int = 512,
        distance_chunk: int = 1024,
        nearest: bool = False,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        unknown = set(feature_metrics) - set(FEATURE_METRICS)
        if unknown:
            raise ValueError(f"unknown feature metrics {sorted(unknown)}; known: {FEATURE_METRICS}")
        if feature_metrics and extractor is None:
            raise ValueError(f"{feature_metrics} need a feature extractor")
        self.extractor = extractor if feature_metrics else None
        self.feature_metrics = nn.ModuleDict()
        features = Features(num_features)
        common = {"reset_real_features": False}
        with warnings.catch_warnings():  # KID and MiFID warn that they keep all features
            warnings.simplefilter("ignore", UserWarning)
            if "fid" in feature_metrics:
                self.feature_metrics["fid"] = FID(features, **common)
            if "kid" in feature_metrics:
                self.feature_metrics["kid"] = KID(
                    features, subsets=kid_subsets, subset_size=kid_subset_size, **common
                )
            if "mifid" in feature_metrics:
                self.feature_metrics["mifid"] = MemorizationInformedFrechetInceptionDistance(
                    features, **common
                )
        if "prdc" in feature_metrics:
            self.feature_metrics["prdc"] = PRDC(distance_chunk)
        self.swd: Metric | None = None
        if swd:
            self.swd = SlicedWassersteinDistance(image_size, swd_patches_per_image, swd_directions)
        self.real_features: list[Tensor] = []  # this rank's, kept for the on-disk cache
        self.real_features_loaded = False
        self.fake_seen = 0  # on this rank, since the last reset
        self.nearest, self.distance_chunk = nearest, distance_chunk
        self.nn_space = "Inception features" if self.extractor is not None else PIXEL_SPACE
        self._nn_features: dict[bool, list[Tensor]] = {True: [], False: []}  # this rank's, by real
        self._nearest_real: NearestReal | None = None
        self.per_class: PerClassMetrics | None = None
        if class_names:
            image = {}
            if swd:
                image["swd"] = lambda: SlicedWassersteinDistance(
                    image_size, swd_patches_per_image, swd_directions
                )
            scores = {}
            if "fid" in self.feature_metrics:
                scores["fid"] = frechet_distance
            if "kid" in self.feature_metrics:
                scores["kid"] = lambda real, fake: float(
                    kernel_distance(real, fake, kid_subsets, kid_subset_size)[0]
                )
            self.per_class = PerClassMetrics(class_names, image, scores)

    @torch.no_grad()
    def update(self, images: Tensor, real: bool, labels: Tensor | None = None) -> None:
        """Add uint8 (N, C, H, W) images (of classes `labels`, for the per-class metrics); real
        features are skipped once loaded from a cache."""
        if self.extractor is not None and not (real and self.real_features_loaded):
            self._update_features(self._extract(images), real, labels)
        elif self.nearest and self.extractor is None:
            self._nn_features[real].append(pixel_features(images))
        if self.swd is not None:
            self.swd.update(images, real)
        if self.per_class is not None and labels is not None:
            self.per_class.update_images(images, labels, real)
        if not real:
            self.fake_seen += images.size(0)

    def _extract(self, images: Tensor) -> Tensor:
        rgb = images.expand(-1, 3, -1, -1) if images.size(1) == 1 else images
        return self.extractor(rgb).float()

    def _update_features(self, features: Tensor, real: bool, labels: Tensor | None) -> None:
        for metric in self.feature_metrics.values():
            metric.update(features, real=real)
        if self.per_class is not None and labels is not None:
            self.per_class.update_features(features, labels, real)
        if real:
            self.real_features.append(features)
        if self.nearest:
            self._nn_features[real].append(features)

    @torch.no_grad()
    def nn_features(self, images: Tensor) -> Tensor:
        """uint8 images in the nearest-neighbour space (`nn_space`). Local: no collective."""
        return self._extract(images) if self.extractor is not None else pixel_features(images)

    def nearest_real(self) -> NearestReal:
        """The real subset (dataset order) in the nearest-neighbour space, once the real pass is
        complete. Collective the first time (a gather), kept after."""
        if self._nearest_real is None:
            features = _gather_in_dataset_order(self._nn_features[True])
            self._nearest_real = NearestReal(features, self.distance_chunk)
        return self._nearest_real

    def load_real_features(self, features: Tensor, labels: Tensor | None = None) -> None:
        """This rank's share of cached real features (and their classes): the real image pass
        is skipped."""
        device = self._device()
        labels = labels.to(device) if labels is not None else None
        self._update_features(features.to(device), True, labels)
        self.real_features_loaded = True

    def gather_real_features(self) -> Tensor:
        """All ranks' real features in dataset order (rank r has rows r, r + W, ...). Collective."""
        return _gather_in_dataset_order(self.real_features)

    def fake_count(self) -> int:
        """Generated images seen since the last reset, summed over ranks. Collective."""
        count = torch.tensor(self.fake_seen, device=self._device())
        if _distributed():
            dist.all_reduce(count)
        return int(count)

    def compute(self) -> dict[str, float]:
        """Every enabled metric. Collective: all ranks call it, all get the same values."""
        values: dict[str, float] = {}
        for name, metric in self.feature_metrics.items():
            _one_tensor_per_list_state(metric)
            result = metric.compute()
            if name == "kid":
                values["kid"], values["kid_std"] = float(result[0]), float(result[1])
            elif isinstance(result, dict):  # prdc
                values.update({k: float(v) for k, v in result.items()})
            else:
                values[name] = float(result)
        if self.swd is not None:
            values.update({k: float(v) for k, v in self.swd.compute().items()})
        if self.nearest:
            local = torch.cat(self._nn_features[False])
            fakes = torch.cat(gather_all_tensors(local)) if _distributed() else local
            values["nn_ratio"] = self.nearest_real().nn_ratio(fakes)
        if self.per_class is not None:
            values |= self.per_class.compute()
        return values

    def reset(self) -> None:
        """Forget the generated images; real statistics stay."""
        for metric in self.feature_metrics.values():
            metric.reset()
        if self.swd is not None:
            self.swd.reset()
        if self.per_class is not None:
            self.per_class.reset()
        self._nn_features[False].clear()
        self.fake_seen = 0

    def _device(self) -> torch.device:
        for metric in [*self.feature_metrics.values(), self.swd]:
            if metric is not None:
                return metric.device
        return torch.device("cpu")
