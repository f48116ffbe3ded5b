"""Quality metrics: FID/KID and DDP reduction, SWD, the real-feature cache, Inception offline."""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import hydra.utils
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from hydra.errors import InstantiationException
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.image.mifid import MemorizationInformedFrechetInceptionDistance

from dcgan_lightning.callbacks.quality import QualityMetrics
from dcgan_lightning.data.shapes import SHAPES, ShapesDataModule
from dcgan_lightning.metrics import inception
from dcgan_lightning.metrics.evaluator import (
    FEATURE_METRICS,
    FID,
    Features,
    QualityEvaluator,
    to_uint8,
)
from dcgan_lightning.metrics.swd import (
    SlicedWassersteinDistance,
    laplacian_pyramid,
    pyr_up,
    pyramid_resolutions,
)
from dcgan_lightning.train import train
from tests.conftest import REPO, compose_config, fast_ranks, requires_cuda, start_ranks, tiny


def shapes(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    dm = ShapesDataModule(num_images=n, seed=seed, image_size=size, batch_size=1)
    dm.setup()
    return dm.images


class TinyExtractor(nn.Module):
    """A fixed random conv + ReLU + global mean: 16 features, cheap. Counts the images it sees."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, self.num_features, 5, stride=2)
        self.images_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images_seen += len(x)
        return F.relu(self.conv(x.float() / 255)).mean(dim=(2, 3))


def tiny_evaluator(**kwargs) -> QualityEvaluator:
    settings = {"feature_metrics": ("fid", "kid"), "kid_subset_size": 32, "kid_subsets": 10}
    return QualityEvaluator(32, TinyExtractor(), num_features=16, **{**settings, **kwargs})


def evaluate(real: torch.Tensor, fake: torch.Tensor, **kwargs) -> dict[str, float]:
    ev = tiny_evaluator(**kwargs)
    for chunk in real.split(64):
        ev.update(chunk, real=True)
    for chunk in fake.split(64):
        ev.update(chunk, real=False)
    return ev.compute()


# -- FID / KID with a small feature extractor -------------------------------------------------
def test_fid_kid_are_zero_for_a_set_against_itself_and_large_against_noise() -> None:
    images = shapes(512)
    noise = torch.randint(0, 256, images.shape, dtype=torch.uint8)
    same = evaluate(images, images, swd=False)
    halves = evaluate(images[:256], images[256:], swd=False)
    against_noise = evaluate(images, noise, swd=False)
    assert abs(same["fid"]) < 1e-6 * against_noise["fid"]
    assert abs(same["kid"]) < 0.05 * against_noise["kid"]  # unbiased: about 0, either sign
    assert 0 < halves["fid"] < 0.05 * against_noise["fid"]
    assert halves["kid"] < 0.05 * against_noise["kid"]


def test_one_shared_feature_pass_gives_torchmetrics_own_values() -> None:
    real, fake = shapes(96), shapes(80, seed=1)
    # Subsets of 40, at most half the 80 fakes, so our size is the one torchmetrics is given.
    ours = evaluate(real, fake, swd=False, kid_subset_size=40, feature_metrics=FEATURE_METRICS)
    fid, kid = FrechetInceptionDistance(TinyExtractor()), KernelInceptionDistance(TinyExtractor())
    mifid = MemorizationInformedFrechetInceptionDistance(TinyExtractor())
    for metric in (fid, kid, mifid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid.subset_size, kid.subsets = 40, 10
    torch.manual_seed(0)  # our KID draws its subsets from seed 0
    assert ours["fid"] == pytest.approx(float(fid.compute()), rel=1e-6)
    assert ours["kid"] == pytest.approx(float(kid.compute()[0]), rel=1e-6)
    assert ours["mifid"] == pytest.approx(float(mifid.compute()), rel=1e-5)


@pytest.mark.parametrize("num_real", [10, 300])  # singular (symmetric root) and Cholesky paths
def test_fid_equals_torchmetrics_general_formula(num_real: int) -> None:
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(num_real, 16, generator=gen) @ torch.randn(16, 16, generator=gen)
    fake = torch.randn(200, 16, generator=gen) + 0.5
    fid = FID(Features(16))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    r, f = real.double(), fake.double()
    expected = _compute_fid(r.mean(0), torch.cov(r.T), f.mean(0), torch.cov(f.T))
    assert float(fid.compute()) == pytest.approx(float(expected), rel=1e-6)


def test_kid_subset_shrinks_to_the_sample_count_and_does_not_touch_the_global_rng() -> None:
    images = shapes(64)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    values = evaluate(images[:20], images[20:40], kid_subset_size=1000, swd=False)
    assert torch.equal(torch.rand(3), expected)
    assert values["kid_std"] >= 0 and torch.isfinite(torch.tensor(values["kid"]))


def test_kid_std_on_a_small_set_comes_from_subsets_that_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """270 images (a painting set after holdout): subsets of at most half the set, so they differ
    and val/kid_std measures something (issue 29.4: all 100 were the whole set, std ~1e-7)."""
    from dcgan_lightning.metrics import evaluator

    generator = torch.Generator().manual_seed(0)
    real = torch.randn(270, 16, generator=generator)
    fake = torch.randn(270, 16, generator=generator) * 1.2 + 0.2
    subsets: list[torch.Tensor] = []
    mmd = evaluator.poly_mmd
    monkeypatch.setattr(evaluator, "poly_mmd", lambda r, f, *a: subsets.append(r) or mmd(r, f, *a))
    mean, std = evaluator.kernel_distance(real, fake, subsets=20, subset_size=1000)
    assert len(subsets) == 20 and all(len(s) == 135 for s in subsets)
    assert len({round(float(s.sum()), 3) for s in subsets}) == 20  # 20 different subsets
    assert float(std) > 0.05 * abs(float(mean)) > 0


def test_uint8_round_trip_of_generator_range() -> None:
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(pixels.float() / 127.5 - 1), pixels)
    assert to_uint8(torch.tensor([-1.5, -1.0, 1.0, 1.5])).tolist() == [0, 0, 255, 255]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SETTINGS = {"swd_patches_per_image": 16, "feature_metrics": FEATURE_METRICS, "nearest": True}


def ddp_worker(rank: int, world: int, port: int, tmp: str) -> None:
    """One gloo rank: its share of real and fake images (rows r, r + W, ...), as the val sampler."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = torch.load(Path(tmp) / "images.pt")
        ev = tiny_evaluator(**DDP_SETTINGS)
        batch = 16 if rank == 0 else 64  # different numbers of updates per rank
        for chunk in data["real"][rank::world].split(batch):
            ev.update(chunk, real=True)
        for chunk in data["fake"][rank::world].split(batch):
            ev.update(chunk, real=False)
        values, features, count = ev.compute(), ev.gather_real_features(), ev.fake_count()
        if rank == 0:
            torch.save({"values": values, "features": features, "count": count}, f"{tmp}/out.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_single_process_values(tmp_path: Path) -> None:
    real, fake = shapes(101), shapes(99, seed=1)  # odd counts: uneven shares per rank
    torch.save({"real": real, "fake": fake}, tmp_path / "images.pt")
    start_ranks(ddp_worker, 2, free_port(), str(tmp_path))
    two = torch.load(tmp_path / "out.pt")

    single = tiny_evaluator(**DDP_SETTINGS)
    single.update(real, real=True)
    single.update(fake, real=False)
    one = single.compute()
    assert two["count"] == 99
    assert two["values"]["fid"] == pytest.approx(one["fid"], rel=1e-9)
    # KID draws random subsets from the gathered features, whose order depends on the world size.
    assert abs(two["values"]["kid"] - one["kid"]) < 4 * one["kid_std"]
    for key in ("swd", "swd_32px", "swd_16px", "precision", "recall", "density", "coverage"):
        assert two["values"][key] == pytest.approx(one[key], rel=1e-5)
    assert two["values"]["nn_ratio"] == pytest.approx(one["nn_ratio"], rel=1e-5)
    # Gathered real features come back in dataset order: the cache is the same for any world size.
    assert torch.allclose(two["features"], single.gather_real_features())


# -- SWD ---------------------------------------------------------------------------------------
def test_laplacian_pyramid_reconstructs_the_image() -> None:
    x = shapes(4, 64).float() / 255
    levels = laplacian_pyramid(x, len(pyramid_resolutions(64)))
    assert [lv.size(-1) for lv in levels] == [64, 32, 16]
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        rebuilt = band + pyr_up(rebuilt)
    assert torch.allclose(rebuilt, x, atol=1e-5)


def swd(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    metric = SlicedWassersteinDistance(real.size(-1), patches_per_image=32, num_directions=128)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return {k: float(v) for k, v in metric.compute().items()}


def test_swd_is_zero_for_identical_sets_and_grows_with_shift_and_blur() -> None:
    images = shapes(512)
    a, b = images[:256], images[256:]  # two samples of one distribution: the noise floor
    same, halves = swd(a, a), swd(a, b)
    assert set(same) == {"swd", "swd_32px", "swd_16px"}
    assert same["swd"] < 1e-6
    shift = torch.randint(-80, 80, (len(b), 1, 1, 1), generator=torch.Generator().manual_seed(0))
    shifted = (b.int() + shift).clamp(0, 255).to(torch.uint8)  # per-image brightness
    assert swd(a, shifted)["swd"] > 1.3 * halves["swd"]
    blurred = [swd(a, TF.gaussian_blur(b, 9, sigma))["swd"] for sigma in (1.0, 1.5, 2.0, 3.0)]
    assert blurred[0] > 1.3 * halves["swd"]
    assert blurred == sorted(blurred) and blurred[-1] > 3 * halves["swd"]


def test_swd_keeps_real_descriptors_across_reset() -> None:
    images = shapes(64)
    metric = SlicedWassersteinDistance(32, patches_per_image=8, num_directions=64)
    metric.update(images[:32], real=True)
    metric.update(images[32:], real=False)
    first = metric.compute()["swd"]
    metric.reset()
    metric.update(images[32:], real=False)
    assert float(metric.compute()["swd"]) == pytest.approx(float(first))
    assert pyramid_resolutions(32) == [32, 16]


# -- train(cfg): weights, cache, checkpoints -----------------------------------------------------
@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub: whatever this machine has cached, only configured weights are found."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


@pytest.fixture
def tiny_inception(offline_hub: Path, monkeypatch: pytest.MonkeyPatch) -> TinyExtractor:
    """`load_inception` returns a TinyExtractor; a dummy weights file stands in for Inception's."""
    extractor = TinyExtractor()
    monkeypatch.setattr(inception, "load_inception", lambda path, antialias: extractor)
    (offline_hub / "weights.pth").write_bytes(b"stand-in")
    return extractor


def metric_overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "logger=csv",
        "metrics.fid=true",  # the Inception metrics, off in the default (shapes) run
        "metrics.kid=true",
        "metrics.prdc=true",
        "metrics.num_samples=32",
        "metrics.kid_subsets=10",
        "metrics.download=false",
        f"metrics.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]


def test_second_run_skips_the_real_feature_pass(
    make_cfg, tiny_inception: TinyExtractor, tmp_path: Path
) -> None:
    weights = f"metrics.feature_extractor_weights_path={tmp_path / 'weights.pth'}"
    first = make_cfg(*metric_overrides(tmp_path, weights), "trainer.num_sanity_val_steps=1")
    first_metrics = train(first)
    # real + generated + nearest.png's 16 samples; the sanity check fed nothing
    assert tiny_inception.images_seen == 32 + 32 + 16
    prdc = {"val/precision", "val/recall", "val/density", "val/coverage"}
    assert prdc | {"val/nn_ratio"} <= set(first_metrics)  # from the same features
    result = json.loads((Path(first.paths.output_dir) / "metrics.json").read_text())
    assert prdc <= set(result["metrics"])  # what the sweep summary tabulates
    assert (Path(first.paths.output_dir) / "plots" / "nearest.png").is_file()
    cached = list((tmp_path / "cache").glob("real_features_*.pt"))
    assert len(cached) == 1 and torch.load(cached[0])["features"].shape == (32, 16)

    tiny_inception.images_seen = 0
    second = tiny(compose_config(metric_overrides(tmp_path, weights), tmp_path / "second"))
    second_metrics = train(second)  # another run dir, the same cache dir
    assert tiny_inception.images_seen == 32 + 16  # generated images only
    for key in ("val/fid", "val/kid", "val/swd", "val/precision", "val/nn_ratio"):
        assert second_metrics[key] == pytest.approx(first_metrics[key], rel=1e-6)


def test_require_fid_without_weights_fails_before_training(make_cfg, offline_hub: Path) -> None:
    cfg = make_cfg(*metric_overrides(offline_hub, "metrics.require_fid=true"))
    with pytest.raises((RuntimeError, InstantiationException), match="require_fid") as err:
        train(cfg)
    assert "feature_extractor_weights_path" in str(err.value)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_missing_weights_warn_and_train_with_swd_only(make_cfg, offline_hub: Path) -> None:
    cfg = make_cfg(*metric_overrides(offline_hub))
    with pytest.warns(UserWarning, match="No Inception weights") as record:
        metrics = train(cfg)
    assert sum("No Inception weights" in str(w.message) for w in record) == 1
    assert "val/swd" in metrics and "val/fid" not in metrics and "val/kid" not in metrics
    assert "val/precision" not in metrics and metrics["val/nn_ratio"] > 0  # nn in pixel space
    assert (Path(cfg.paths.output_dir) / "plots" / "nearest.png").is_file()
    best = list((Path(cfg.paths.output_dir) / "checkpoints").glob("best_epoch_*.ckpt"))
    assert len(best) == 1
    saved = torch.load(best[0], weights_only=True)
    states = [v for k, v in saved["callbacks"].items() if k.startswith("BestQualityCheckpoint")]
    assert states[0]["monitor"] == "val/swd"


INCEPTION_KEYS = ("fid", "kid", "mifid", "prdc")


def test_the_default_run_needs_no_inception_and_the_experiments_have_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make train` (data=shapes) needs no network: no Inception metric on, no weights looked up
    (issue 28.7). Every shipped experiment, on real images, keeps FID and KID."""
    cfg = compose_config([], tmp_path / "default")
    assert not [k for k in INCEPTION_KEYS if cfg.metrics[k]] and cfg.metrics.swd
    # ...and evaluates on the automatic schedule (metrics/schedule.py), 10% of the wall time
    assert cfg.metrics.every_n_kimg is None and cfg.metrics.eval_every_n_epochs is None
    assert cfg.metrics.max_share == 0.1
    monkeypatch.setattr(inception, "resolve_weights", lambda *a: pytest.fail("looked up weights"))
    assert hydra.utils.instantiate(cfg.metrics).primary_metric == "val/swd"
    monkeypatch.undo()
    experiments = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
    assert len(experiments) >= 10
    for name in experiments:
        metrics = compose_config([f"+experiment={name}"], tmp_path / name).metrics
        assert metrics.fid and metrics.kid and metrics.prdc, name


def test_metrics_none_runs_no_validation(make_cfg, offline_hub: Path) -> None:
    cfg = make_cfg("logger=csv", "metrics=none")
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert not any(k.startswith("val/") for k in metrics)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert not list((out / "checkpoints").glob("best_*"))
    dm = ShapesDataModule(num_images=64, image_size=32, batch_size=16)
    dm.setup()
    assert dm.val_dataloader() == []


@pytest.mark.slow
def test_real_inception_offline_fid_and_checkpoints_without_it(make_cfg, offline_hub: Path) -> None:
    weights = inception.save_random_inception_weights(offline_hub / "inception.pth")
    cfg = make_cfg(
        *metric_overrides(offline_hub, f"metrics.feature_extractor_weights_path={weights}"),
        "metrics.num_samples=4",
        "metrics.swd=false",
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor([metrics["val/fid"], metrics["val/kid"]])).all()
    assert list((offline_hub / "cache").glob("real_features_*.pt"))
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    for ckpt in (checkpoints / "last.ckpt", *checkpoints.glob("best_epoch_*.ckpt")):
        saved = torch.load(ckpt, weights_only=True)
        assert not [k for k in saved["state_dict"] if "Mixed_" in k or "inception" in k.lower()]
        assert ckpt.stat().st_size < 5e6  # Inception alone is ~95 MB


@pytest.mark.slow
def test_ddp_run_caches_the_real_features_a_single_process_computes(
    make_cfg, tiny_inception: TinyExtractor, tmp_path: Path
) -> None:
    weights = f"metrics.feature_extractor_weights_path={tmp_path / 'weights.pth'}"
    cfg = make_cfg(*metric_overrides(tmp_path, weights), "trainer=ddp_sim", fast_ranks())
    cfg.metrics.num_samples = 33  # after tiny(), which sets 32
    metrics = train(cfg)  # 2 gloo processes; an odd sample count: uneven shares
    assert {"val/fid", "val/kid", "val/swd"} <= set(metrics)

    (cached,) = (tmp_path / "cache").glob("real_features_*.pt")
    dm = ShapesDataModule(num_images=64, image_size=32, batch_size=16)
    dm.setup()
    dm.num_val_images = 33
    real = torch.cat(list(dm.val_dataloader()))
    with torch.no_grad():
        expected = TinyExtractor()(real)
    assert torch.allclose(torch.load(cached)["features"], expected, atol=1e-6)


def test_an_unloadable_weights_file_counts_as_missing(offline_hub: Path) -> None:
    garbage = offline_hub / "garbage.pth"
    garbage.write_bytes(b"not a state dict")
    settings = {"feature_extractor_weights_path": str(garbage), "download": False}
    with pytest.warns(UserWarning, match="does not load"):
        quality = QualityMetrics(**settings)
    assert quality.feature_metrics == () and quality.primary_metric == "val/swd"
    with pytest.raises(RuntimeError, match="require_fid"):
        QualityMetrics(require_fid=True, **settings)


# -- evaluation leaves the training's random streams alone ------------------------------------
EXTRACTORS = ["tiny", pytest.param("inception", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=EXTRACTORS)
def extractor(request: pytest.FixtureRequest, tmp_path_factory) -> nn.Module:
    """TinyExtractor, and the real Inception architecture with random weights (offline)."""
    if request.param == "tiny":
        return TinyExtractor()
    weights = inception.save_random_inception_weights(tmp_path_factory.mktemp("w") / "w.pth")
    return inception.load_inception(weights)


def full_evaluation(extractor: nn.Module, device: str) -> dict[str, float]:
    """FID, KID, MiFID and SWD of 12 generated against 12 real images, as a run evaluates."""
    images = torch.cat([shapes(12, seed=0), shapes(12, seed=1)]).to(device)
    num_features = getattr(extractor, "num_features", inception.NUM_FEATURES)
    ev = QualityEvaluator(
        32, extractor, num_features, FEATURE_METRICS, kid_subsets=5, kid_subset_size=8,
        swd_patches_per_image=8, swd_directions=32,
    ).to(device)  # fmt: skip
    ev.update(images[:12], real=True)
    ev.update(images[12:], real=False)
    return ev.compute()


def random_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_evaluation_leaves_every_random_stream_untouched(
    extractor: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No global generator is drawn from or reseeded (torch.manual_seed reseeds every CUDA one)."""
    seeded = []
    for name in ("manual_seed", "manual_seed_all"):
        monkeypatch.setattr(torch.cuda, name, lambda seed, name=name: seeded.append(name))
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    seeded.clear()
    before = random_states()
    first = full_evaluation(extractor, "cpu")
    after = random_states()
    assert seeded == []  # no CUDA generator reseeded
    assert torch.equal(before[0], after[0])
    assert np.array_equal(before[1], after[1]) and before[2] == after[2]
    assert {"fid", "kid", "mifid", "swd"} <= set(first)
    assert full_evaluation(extractor, "cpu")["kid"] == first["kid"]  # subsets are seeded


@requires_cuda
@pytest.mark.gpu
def test_evaluation_on_cuda_leaves_the_cuda_generator_untouched(extractor: nn.Module) -> None:
    torch.cuda.manual_seed_all(7)
    before, cpu_before = torch.cuda.get_rng_state(), torch.get_rng_state()
    first = full_evaluation(extractor.cuda(), "cuda")
    assert torch.equal(torch.cuda.get_rng_state(), before)
    assert torch.equal(torch.get_rng_state(), cpu_before)
    assert full_evaluation(extractor, "cuda")["kid"] == first["kid"]


# -- per class (a conditional model): SWD, FID and KID of each class ---------------------------
def test_fid_and_kid_per_class_are_each_class_own_fid_and_kid() -> None:
    real, real_y = shapes(96), torch.arange(96) % 3
    noise = torch.randint(
        0, 256, real.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    fake = torch.where((real_y == 2).view(-1, 1, 1, 1), noise, shapes(96, seed=1))  # class 2: noise
    fake_y = real_y.clone()
    ev = tiny_evaluator(class_names=["a", "b", "c", "lonely"], swd=True)
    for chunk in range(0, 96, 40):  # batches with every class and uneven sizes
        ev.update(real[chunk : chunk + 40], True, real_y[chunk : chunk + 40])
        ev.update(fake[chunk : chunk + 40], False, fake_y[chunk : chunk + 40])
    values = ev.compute()
    for name, c in (("a", 0), ("b", 1), ("c", 2)):
        alone = evaluate(real[real_y == c], fake[fake_y == c], swd=True)
        for metric in ("fid", "kid", "swd"):
            assert values[f"{metric}/{name}"] == pytest.approx(alone[metric], rel=1e-4, abs=1e-6)
    assert values["fid/c"] > 3 * max(values["fid/a"], values["fid/b"])  # noise stands out
    assert "fid/lonely" not in values  # no image of it: no value, and not in the mean
    for metric in ("fid", "kid", "swd"):
        per = [values[f"{metric}/{n}"] for n in "abc"]
        assert values[f"{metric}_class_mean"] == pytest.approx(sum(per) / 3)
    ev.reset()  # generated images forgotten, real ones kept
    ev.update(real, False, real_y)
    again = ev.compute()
    assert all(abs(again[f"fid/{n}"]) < 1e-6 * values["fid/c"] for n in "abc")


def test_intra_fid_is_logged_and_the_same_from_the_real_feature_cache(
    make_cfg, tiny_inception, tmp_path: Path
) -> None:
    weights = f"metrics.feature_extractor_weights_path={tmp_path / 'weights.pth'}"
    overrides = [*metric_overrides(tmp_path, weights), "model=cdcgan", "data.labels=true"]
    first = train(make_cfg(*overrides))
    first_seen, tiny_inception.images_seen = tiny_inception.images_seen, 0
    assert len(list((tmp_path / "cache").glob("real_features_*.pt"))) == 1
    second = train(tiny(compose_config(overrides, tmp_path / "second")))
    assert tiny_inception.images_seen == first_seen - 32  # the 32 real images: cached
    for metric in ("fid", "kid", "swd"):
        keys = [f"val/{metric}/{shape}" for shape in SHAPES] + [f"val/{metric}_class_mean"]
        for key in keys:
            assert second[key] == pytest.approx(first[key], rel=1e-6), key
