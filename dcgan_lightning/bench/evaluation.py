"""Cost of one quality evaluation at 1,000 and 10,000 samples, with and without real statistics,
and a small-set run's training against its evaluations (`small_set_rows`).

SWD is timed end to end. FID/KID need Inception, whose real weights cannot be downloaded here: a
random-weights file with Inception's architecture stands in (same cost, meaningless values). A full
Inception pass over 10,000 CPU images takes most of an hour, so Inception is timed per image on one
batch and the evaluation totals are derived: images x per-image time + the measured metric
computation. Images are 64 px, 3 channels; generating them with G is not counted.
Run alone: `python -m dcgan_lightning.bench.evaluation [--quick]`.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics.image.fid import _compute_fid

from dcgan_lightning.bench import median_seconds, row
from dcgan_lightning.bench.training import BENCH_LIKE, quiet
from dcgan_lightning.callbacks.quality import SWD_MAX_PATCHES_PER_IMAGE
from dcgan_lightning.compose import compose_train_config
from dcgan_lightning.metrics import inception
from dcgan_lightning.metrics.evaluator import QualityEvaluator, _factor
from dcgan_lightning.metrics.swd import SlicedWassersteinDistance
from dcgan_lightning.train import train

SECTION = "evaluation"
SIZE, BATCH, FEATURES = 64, 100, inception.NUM_FEATURES
SWD_PATCHES_PER_LEVEL = 32768  # conf/metrics/default.yaml


def images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)


def swd_times(n: int, repeats: int, warm_up: bool) -> tuple[float, float]:
    """(first evaluation: real + fake descriptors + compute, later evaluations: fake + compute)."""
    per_image = min(SWD_MAX_PATCHES_PER_IMAGE, -(-SWD_PATCHES_PER_LEVEL // n))
    real, fake = images(n, 0), images(n, 1)

    def first() -> None:
        metric = SlicedWassersteinDistance(SIZE, per_image)
        for batch in real.split(BATCH):
            metric.update(batch, real=True)
        later(metric)

    def later(metric: SlicedWassersteinDistance) -> None:
        metric.reset()
        for batch in fake.split(BATCH):
            metric.update(batch, real=False)
        metric.compute()

    ready = SlicedWassersteinDistance(SIZE, per_image)
    for batch in real.split(BATCH):
        ready.update(batch, real=True)
    return median_seconds(first, repeats, warm_up), median_seconds(
        lambda: later(ready), repeats, warm_up
    )


def feature_metric_times(n: int, repeats: int, warm_up: bool) -> dict[str, float]:
    """FID + KID from ready features: loading the real ones, and one evaluation's computation."""
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(n, FEATURES, generator=gen) @ torch.randn(FEATURES, FEATURES, generator=gen)
    fake = real + 0.3 * torch.randn(n, FEATURES, generator=gen)
    identity = torch.nn.Identity()

    def fresh() -> QualityEvaluator:
        ev = QualityEvaluator(SIZE, identity, FEATURES, ("fid", "kid"), swd=False)
        ev.load_real_features(real)
        return ev

    ev = fresh()

    def evaluation(ev: QualityEvaluator) -> None:
        ev.reset()
        for batch in fake.split(BATCH):
            ev.update(batch, real=False)
        ev.compute()

    firsts = []  # the first compute of a run also factorises the real covariance
    for _ in range(max(1, repeats // 3)):
        new = fresh()
        start = time.perf_counter()
        evaluation(new)
        firsts.append(time.perf_counter() - start)
    return {
        "load": median_seconds(fresh, repeats, warm_up),
        "first": statistics.median(firsts),
        "later": median_seconds(lambda: evaluation(ev), repeats, warm_up),
    }


def inception_seconds_per_image(repeats: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        weights = inception.save_random_inception_weights(Path(tmp) / "inception.pth")
        net = inception.load_inception(weights)
    batch = images(32, 2)
    with torch.no_grad():
        return median_seconds(lambda: net(batch), repeats, warm_up=True) / len(batch)


def fid_trace_term_times() -> tuple[float, float, float]:
    """torchmetrics' eigvals(S_r S_f) against ours: factorising S_r (once a run), eigvalsh."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(4096, FEATURES, generator=gen, dtype=torch.float64) for _ in range(2))
    cov_a, cov_b, mean = torch.cov(a.T), torch.cov(b.T), torch.zeros(FEATURES, dtype=torch.float64)
    start = time.perf_counter()
    _compute_fid(mean, cov_a, mean, cov_b)
    general = time.perf_counter() - start
    start = time.perf_counter()
    factor = _factor(cov_a)
    factorise = time.perf_counter() - start
    start = time.perf_counter()
    torch.linalg.eigvalsh(factor.T @ cov_b @ factor)
    return general, factorise, time.perf_counter() - start


class RunTimes(Callback):
    """Writes `out` at the end of fit: wall seconds from train start, each evaluation's seconds
    (the validation loop), batches trained."""

    def __init__(self, out: str) -> None:
        self.out, self.evaluations = Path(out), []
        self.start = self.eval_start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.eval_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluations.append(time.perf_counter() - self.eval_start)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = trainer.fit_loop.epoch_loop.total_batch_idx + 1
        wall = time.perf_counter() - self.start
        times = {"wall": wall, "evaluations": self.evaluations, "batches": batches}
        self.out.write_text(json.dumps(times))


def small_set_times(
    images: int = 300, size: int = 64, batch: int = 32, epochs: int = 10, extra: tuple = ()
) -> dict[str, Any]:
    """A `+experiment=monet`-sized run on the embedded shapes (no data to fetch): 10% held out,
    the default metrics (SWD, nn_ratio, r_v; no Inception), evaluated after every epoch."""
    device = "gpu" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp, quiet():
        out = Path(tmp) / "times.json"
        overrides = [
            "data=shapes",
            f"data.num_images={images}",
            f"data.image_size={size}",
            f"data.batch_size={batch}",
            "data.holdout=0.1",
            f"trainer={device}",
            f"trainer.max_epochs={epochs}",
            "metrics.eval_every_n_epochs=1",
            "metrics.download=false",
            *BENCH_LIKE,
            f"+callbacks.run_times._target_={RunTimes.__module__}.RunTimes",
            f"+callbacks.run_times.out={out}",
            *extra,
        ]
        train(compose_train_config(overrides, Path(tmp) / "run"))
        return json.loads(out.read_text()) | {"images": images, "size": size, "batch": batch}


def small_set_rows(times: dict[str, Any]) -> list[dict]:
    """Training per batch against one evaluation, and the evaluation share of wall time at the
    old default (every 5 epochs) and at 10% (metrics.max_share's default)."""
    evaluations = times["evaluations"]
    per_batch = (times["wall"] - sum(evaluations)) / times["batches"]
    evaluation = statistics.median(evaluations)
    per_epoch = times["batches"] / len(evaluations) * per_batch  # one evaluation an epoch here
    every_5 = evaluation / (5 * per_epoch + evaluation)
    what = f"{times['images']} shapes (10% held out), {times['size']} px, batch {times['batch']}"
    return [
        row(SECTION, "Small-set run: training, per batch", 1e3 * per_batch, "ms", what),
        row(
            SECTION,
            "Small-set run: one evaluation (SWD, nn_ratio, r_v)",
            evaluation,
            "s",
            f"= {evaluation / per_batch:.0f} training batches; every 5 epochs (the old default) "
            f"{100 * every_5:.0f}% of the wall time; metrics.max_share keeps it to 10%",
        ),
    ]


def run(quick: bool = False) -> list[dict]:
    repeats = 1 if quick else 3
    counts = (1000,) if quick else (1000, 10000)
    per_image = inception_seconds_per_image(repeats)
    rows = [
        row(
            SECTION,
            "Inception v3 forward, per image",
            per_image * 1e3,
            "ms",
            "batch of 32, fp32, random-weights file (no download possible here)",
        )
    ]
    for n in counts:
        big = n > 1000  # minutes per call: once, no warm-up (the 1,000 case warmed up)
        swd_first, swd_later = swd_times(n, 1 if big else repeats, not big)
        feats = feature_metric_times(n, 1 if big else repeats, not big)
        inception_pass = n * per_image
        rows += [
            row(SECTION, f"SWD, {n} samples, first evaluation", swd_first, "s", "real pass too"),
            row(SECTION, f"SWD, {n} samples, later evaluation", swd_later, "s", "measured"),
            row(
                SECTION,
                f"FID+KID computation, {n} samples",
                feats["later"],
                "s",
                "from features; first evaluation of a run: "
                f"{feats['first']:.1f} s (real covariance root)",
            ),
            row(
                SECTION,
                f"FID+KID+SWD, {n} samples, with real-stat cache",
                inception_pass + feats["load"] + feats["first"] + swd_first,
                "s",
                f"first evaluation; derived: {n} x Inception + load cache "
                f"({feats['load']:.1f} s) + computation; later ones: "
                f"{inception_pass + feats['later'] + swd_later:,.0f} s",
            ),
            row(
                SECTION,
                f"FID+KID+SWD, {n} samples, without cache",
                2 * inception_pass + feats["load"] + feats["first"] + swd_first,
                "s",
                f"first evaluation; derived: {2 * n} x Inception (real + generated) + computation",
            ),
        ]
    rows += small_set_rows(small_set_times(epochs=3 if quick else 10))
    if not quick:
        general, factorise, symmetric = fid_trace_term_times()
        rows += [
            row(SECTION, "FID trace term, torchmetrics eigvals", general, "s", "2048 features"),
            row(
                SECTION,
                "FID trace term, Cholesky + eigvalsh (ours)",
                symmetric,
                "s",
                f"same value; + {factorise:.2f} s once a run to factorise the real covariance",
            ),
        ]
    return rows


if __name__ == "__main__":
    from dcgan_lightning.bench.__main__ import table

    print(table(run(quick="--quick" in sys.argv)))
