"""Precision/recall/density/coverage and the nearest-neighbour memorisation check: known answers."""

from __future__ import annotations

import pytest
import torch

from dcgan_lightning.metrics.evaluator import FEATURE_METRICS, QualityEvaluator
from dcgan_lightning.metrics.nearest import NearestReal, nearest_neighbours, pixel_features
from dcgan_lightning.metrics.prdc import PRDC, prdc
from tests.test_metrics import TinyExtractor, shapes


def clusters(centres: torch.Tensor, per_cluster: int, seed: int, spread: float = 0.1):
    gen = torch.Generator().manual_seed(seed)
    points = centres.repeat_interleave(per_cluster, 0)
    return points + spread * torch.randn(points.shape, generator=gen)


CENTRES = 10 * torch.eye(10, 16)  # 10 modes, far apart against their spread
LINE = torch.arange(10.0).view(10, 1) * torch.tensor([[10.0, 0.0]])  # 10 modes in a plane


def test_identical_sets_score_one() -> None:
    real = clusters(CENTRES, 30, seed=0)
    values = prdc(real, real.clone(), chunk=64)
    assert values["precision"] == values["recall"] == values["coverage"] == 1
    # Each sample sits in its own real ball and in about k others: density ~ (1 + k) / k.
    assert values["density"] == pytest.approx(1.2, abs=0.1)


def test_far_apart_clusters_score_zero() -> None:
    real = clusters(CENTRES[:1], 100, seed=0)
    fake = clusters(CENTRES[1:2], 100, seed=1)
    values = prdc(real, fake, chunk=32)
    assert {k: float(v) for k, v in values.items()} == dict.fromkeys(values, 0.0)


def test_half_the_modes_is_precise_with_half_the_recall() -> None:
    # In 2-D: k-NN balls in high dimensions with few samples miss fresh samples (low precision).
    real = clusters(LINE, 40, seed=0, spread=1.0)
    fake = clusters(LINE[:5], 80, seed=1, spread=1.0)  # as many samples, from half the modes
    values = {k: float(v) for k, v in prdc(real, fake, chunk=50).items()}
    assert values["precision"] > 0.9
    assert values["recall"] == pytest.approx(0.5, abs=0.05)
    assert values["coverage"] == pytest.approx(0.5, abs=0.05)
    assert values["density"] > 0.9


def test_chunking_does_not_change_the_values() -> None:
    real, fake = clusters(CENTRES, 13, seed=0, spread=3), clusters(CENTRES, 11, seed=1, spread=3)
    whole, blocks = prdc(real, fake, chunk=10_000), prdc(real, fake, chunk=7)
    assert {k: float(v) for k, v in whole.items()} == {k: float(v) for k, v in blocks.items()}


def test_metric_keeps_real_features_across_reset() -> None:
    real, fake = clusters(CENTRES, 20, seed=0), clusters(CENTRES[:5], 20, seed=1)
    metric = PRDC(chunk=64)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    first = metric.compute()
    metric.reset()
    metric.update(fake, real=False)
    assert {k: float(v) for k, v in metric.compute().items()} == {
        k: float(v) for k, v in first.items()
    }


# -- memorisation ----------------------------------------------------------------------------
def test_copies_of_training_images_have_ratio_zero_and_are_their_own_nearest() -> None:
    real = clusters(CENTRES, 10, seed=0, spread=1.0)
    reference = NearestReal(real, chunk=16)
    picks = torch.tensor([3, 17, 42, 99])
    distances, indices = reference.nearest(real[picks], k=3)
    assert torch.equal(indices[:, 0], picks)
    # float32 distances: copies are ~1e-3 apart, not 0 (|x|^2 + |y|^2 - 2xy)
    assert distances[:, 0].max() < 0.01 * reference.leave_one_out
    assert (distances[:, 1] > 0.3 * reference.leave_one_out).all()
    assert reference.nn_ratio(real[picks]) < 0.01
    fresh = clusters(CENTRES, 10, seed=1, spread=1.0)  # new draws of the same distribution
    assert reference.nn_ratio(fresh) == pytest.approx(1, abs=0.3)


def test_leave_one_out_skips_only_the_row_itself() -> None:
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    distances, indices = nearest_neighbours(points, points, 1, chunk=3, exclude_self=True)
    assert indices.flatten().tolist() == [1, 0, 1, 2]
    assert distances.flatten().tolist() == [1.0, 1.0, 2.0, 4.0]


def test_pixel_space_averages_down_to_16_px() -> None:
    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    images[1, :, :32] = 255  # top half white
    features = pixel_features(images)
    assert features.shape == (2, 3 * 16 * 16)
    assert features[0].max() == 0 and features[1].view(3, 16, 16)[:, :8].min() == 1


@pytest.mark.parametrize("space", ["Inception features", "pixels at 16 px"])
def test_an_evaluation_of_copies_gives_nn_ratio_near_zero(space: str) -> None:
    """A "generator" returning training images: ratio ~0, each its own nearest real image."""
    real = shapes(64)
    extractor = TinyExtractor() if space.startswith("Inception") else None
    metrics = FEATURE_METRICS if extractor is not None else ()
    ev = QualityEvaluator(32, extractor, 16, metrics, kid_subset_size=16, swd=False, nearest=True)
    for chunk in real.split(16):
        ev.update(chunk, real=True)
    ev.update(real[:32], real=False)  # copies
    values = ev.compute()
    assert ev.nn_space == space
    assert values["nn_ratio"] < 0.01
    _, index = ev.nearest_real().nearest(ev.nn_features(real[5:8]), k=3)
    assert index[:, 0].tolist() == [5, 6, 7]
    if extractor is not None:  # and PRDC from the same features: copies of half the real set
        assert values["precision"] == 1 and values["recall"] >= 0.5 and values["coverage"] >= 0.5
    ev.reset()
    ev.update(shapes(32, seed=1), real=False)  # fresh samples of the same distribution
    assert 0.5 < ev.compute()["nn_ratio"] < 2
