"""Quality metrics (val/fid, val/kid, val/mifid, val/precision, val/recall, val/density,
val/coverage, val/swd, val/nn_ratio, plots/nearest.png; for a conditional model also val/swd,
val/fid and val/kid per class) and the checkpoint of the best epoch by them.
They run when metrics/schedule.py says (`every_n_kimg`, `eval_every_n_epochs` or `max_share`),
and always after the run's last batch.

The validation loop carries the work: the datamodule yields a fixed subset of `num_samples` real
images (split across ranks), `GAN.validation_step` generates as many images, this callback feeds
both to a `QualityEvaluator`. Inception lives here, not in the LightningModule: it never reaches a
checkpoint. Real statistics are computed at the first evaluation (never in the sanity check) and
cached on disk for later runs.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from dcgan_lightning.callbacks.nearest import draw_nearest, spread_over_classes
from dcgan_lightning.callbacks.samples import log_image
from dcgan_lightning.metrics import cache, inception
from dcgan_lightning.metrics.evaluator import QualityEvaluator, to_uint8
from dcgan_lightning.metrics.schedule import EvaluationSchedule

log = logging.getLogger(__name__)
SWD_MAX_PATCHES_PER_IMAGE = 128  # ProGAN's count: more would mostly repeat neighbourhoods
NEAREST_SHOWN = 3  # training images beside each sample in plots/nearest.png


class QualityMetrics(Callback):
    """Computes and logs `val/<metric>`; see conf/metrics/default.yaml for every knob."""

    def __init__(
        self,
        num_samples: int = 2048,
        every_n_kimg: float | None = None,
        eval_every_n_epochs: int | None = None,
        max_share: float = 0.1,
        eval_on_interrupt: bool = False,
        fid: bool = True,
        kid: bool = True,
        mifid: bool = False,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        antialias: bool = False,
        feature_extractor_weights_path: str | None = None,
        download: bool = True,
        require_fid: bool = False,
        swd: bool = True,
        swd_patches_per_level: int = 32768,
        swd_directions: int = 512,
        prdc: bool = True,
        distance_chunk: int = 1024,
        nearest_samples: int = 16,
        plots_dir: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"metrics.num_samples must be >= 2, got {num_samples}")
        self.num_samples = num_samples
        # Checks the keys now; the images per batch are known at setup.
        self.schedule = EvaluationSchedule(1, every_n_kimg, eval_every_n_epochs, max_share)
        self.eval_on_interrupt, self._held_signal = eval_on_interrupt, False
        self._clock: float | None = None  # perf_counter at this session's train start
        self._eval_started: float | None = None
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.swd, self.swd_patches_per_level, self.swd_directions = (
            swd,
            swd_patches_per_level,
            swd_directions,
        )
        self.cache_dir = cache_dir
        self.distance_chunk, self.nearest_samples = distance_chunk, nearest_samples
        self.plots_dir = Path(plots_dir) if plots_dir else None
        self.requested_feature_metrics = tuple(
            m for m, on in (("fid", fid), ("kid", kid), ("mifid", mifid), ("prdc", prdc)) if on
        )
        self.feature_metrics = self.requested_feature_metrics
        self.extractor, self.extractor_id = None, None
        # Resolved by each process at start-up, before any training; `setup` makes ranks agree.
        if self.feature_metrics:
            weights, why = inception.resolve_weights(feature_extractor_weights_path, download)
            if weights is not None:
                try:
                    self.extractor = inception.load_inception(weights, antialias)
                except Exception as err:  # a corrupt or foreign file counts as no weights
                    weights, why = None, f"{weights} does not load ({type(err).__name__}: {err})"
            if weights is None and require_fid:
                raise RuntimeError(
                    f"metrics.require_fid=true but no Inception weights: {why}. "
                    f"{inception.how_to_supply()}"
                )
            if weights is None:
                rank_zero_warn(
                    f"No Inception weights ({why}): training WITHOUT "
                    f"{'/'.join(self.feature_metrics)}, with SWD only. {inception.how_to_supply()} "
                    "(metrics.require_fid=true turns this warning into an error)."
                )
                self.feature_metrics = ()
            else:
                self.extractor_id = f"inception-{inception.weights_id(weights)}-aa{antialias}"
        self.evaluator: QualityEvaluator | None = None
        self.real_done, self._write_cache = False, False

    @property
    def enabled(self) -> bool:
        return bool(self.feature_metrics) or self.swd

    @property
    def primary_metric(self) -> str | None:
        """The best checkpoint's metric: val/fid when Inception is available, else val/swd."""
        for name in ("fid", "kid", "swd"):
            if name in self.feature_metrics or (name == "swd" and self.swd):
                return f"val/{name}"
        return None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.requested_feature_metrics:  # a config value: every rank takes this branch
            self._agree_on_weights()
        if not self.enabled:
            return
        every = trainer.check_val_every_n_epoch
        if stage == "fit" and every not in (1, None):
            raise ValueError(
                f"trainer.check_val_every_n_epoch={every}: evaluations follow "
                "metrics.every_n_kimg (or metrics.max_share) instead; leave it at 1"
            )
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "num_val_images"):
            raise TypeError("QualityMetrics needs an ImageDataModule (dcgan_lightning.data.base)")
        available = len(datamodule.images)
        n = min(self.num_samples, available)
        if n < self.num_samples:
            rank_zero_warn(
                f"metrics.num_samples={self.num_samples} but the dataset has {available} images: "
                f"metrics use {n} real and {n} generated images"
            )
        datamodule.num_val_images = n
        self.schedule.images_per_batch = datamodule.batch_size * trainer.world_size
        if self.eval_on_interrupt and trainer.world_size > 1:
            # Each rank sees its signal at its own time: deciding on it alone would split them.
            rank_zero_warn("metrics.eval_on_interrupt works in single-process runs only: ignored")
            self.eval_on_interrupt = False
        # A conditional model on labelled data: SWD, FID and KID per class too.
        conditional = getattr(pl_module, "labels", None) is not None and datamodule.num_classes
        self.evaluator = QualityEvaluator(
            datamodule.image_size,
            self.extractor,
            num_features=getattr(self.extractor, "num_features", inception.NUM_FEATURES),
            feature_metrics=self.feature_metrics,
            kid_subsets=self.kid_subsets,
            kid_subset_size=self.kid_subset_size,
            swd=self.swd,
            swd_patches_per_image=min(
                SWD_MAX_PATCHES_PER_IMAGE, -(-self.swd_patches_per_level // n)
            ),
            swd_directions=self.swd_directions,
            distance_chunk=self.distance_chunk,
            nearest=self.nearest_samples > 0,
            class_names=datamodule.class_names if conditional else None,
        ).to(pl_module.device)
        self.real_done = False
        self._cache_settings = {
            "data": datamodule.fingerprint,
            "image_size": datamodule.image_size,
            "channels": datamodule.channels,
            "num_images": n,
            "extractor": self.extractor_id,
        }
        # Rank 0 decides whether the real pass is skipped (and its features gathered and cached
        # after): ranks taking different paths would wait in different collectives. Its cached
        # features reach every rank, whose own disk may not hold them (a node-local data_dir).
        decision = self._load_cache(n) if trainer.is_global_zero else None
        cached, self._write_cache = trainer.strategy.broadcast(decision, src=0)
        if cached is not None:
            share = slice(trainer.global_rank, None, trainer.world_size)  # the val sampler's split
            labels = datamodule.val_labels() if conditional else None
            self.evaluator.load_real_features(
                cached[share], None if labels is None else labels[share]
            )

    def _agree_on_weights(self) -> None:
        """Rank 0's Inception decides for every rank: the feature metrics' collectives run on all
        ranks or none. Rank 0 without weights: no rank computes them (rank 0 warned at start-up).
        Another rank without them, or with other weights: every rank stops, naming those ranks."""
        ids = _gather_objects(self.extractor_id)
        if ids[0] is None:
            self.extractor, self.extractor_id, self.feature_metrics = None, None, ()
            return
        lacking = [rank for rank, other in enumerate(ids) if other != ids[0]]
        if lacking:
            raise RuntimeError(
                f"Inception weights on rank 0 but not on rank(s) {lacking} (or other weights "
                f"there: {[ids[r] for r in lacking]} against {ids[0]}); every rank must compute "
                "the same features. Give every node the same file: "
                f"{inception.how_to_supply()} (a path all nodes share works too)."
            )

    def _load_cache(self, n: int) -> tuple[Tensor | None, bool]:
        """(the cached real features or None, whether to cache them after the first real pass)."""
        path = self._cache_file()
        if path is None:
            return None, False
        cached = cache.load_features(path)
        if cached is None or len(cached) != n:
            return None, True
        log.info("Real-image features loaded from %s", path)
        return cached, False

    def _cache_file(self) -> Path | None:
        if not self.cache_dir or self.extractor_id is None:
            return None
        return cache.cache_path(self.cache_dir, cache.cache_key(**self._cache_settings))

    # -- the schedule: Lightning validates after a batch when val_check_batch divides its index --
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock = time.perf_counter()
        if self.enabled:
            self.schedule.start(_total_batches(trainer))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if not self.enabled:
            return
        epoch_end = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        epochs = trainer.current_epoch + 1 if epoch_end else None
        # A Ctrl-C / SIGTERM (callbacks/interrupt.py) ends the run after this batch. Lightning's
        # validation loop stops after one batch on a pending signal: it is held back meanwhile.
        interrupted = self.eval_on_interrupt and trainer.received_sigterm
        due = self.schedule.due(_batches_done(trainer), _last_batch(trainer) or interrupted, epochs)
        trainer.val_check_batch = 1 if due else sys.maxsize  # read by the loop right after
        if interrupted:
            self._held_signal = True
            trainer._signal_connector.received_sigterm = False

    def _release_signal(self, trainer: pl.Trainer) -> None:
        """The held signal back: the loop stops and callbacks/interrupt.py saves last.ckpt."""
        if self._held_signal:
            self._held_signal = False
            trainer._signal_connector.received_sigterm = True

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._release_signal(trainer)  # had the evaluation not run

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release_signal(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._eval_started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release_signal(trainer)
        if self._eval_started is None or trainer.sanity_checking:
            return
        seconds, self._eval_started = time.perf_counter() - self._eval_started, None
        batches = _batches_done(trainer)
        self.schedule.record(batches, seconds)
        nxt = ""
        if self.schedule.automatic and not _last_batch(trainer):
            plan = self.schedule.plan(batches, seconds, self._wall())
            self.schedule.next_batch = trainer.strategy.broadcast(plan, src=0)  # rank 0's clock
            nxt = f"; next after batch {self.schedule.next_batch}"
        if trainer.is_global_zero:  # in train.log: the evaluations a run made, to repeat them
            log.info(
                "Evaluation %d after batch %d (%g kimg): %.1f s%s",
                len(self.schedule.evaluations),
                batches,
                self.schedule.kimg(batches),
                seconds,
                nxt,
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and self.schedule.evaluations and trainer.is_global_zero:
            log.info(self.schedule.summary(self._wall()))

    def _wall(self) -> float:
        """Wall seconds of training so far, across resumed sessions."""
        now = time.perf_counter()
        return self.schedule.wall_offset + now - (self._clock if self._clock is not None else now)

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(self._wall())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "schedule" in state_dict:
            self.schedule.load_state_dict(state_dict["schedule"])

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.evaluator is None or trainer.sanity_checking:
            return
        labels = outputs.get("labels")  # a conditional model's: those of real and fake alike
        self.evaluator.update(to_uint8(outputs["fake"]), False, labels)
        if not self.real_done:
            self.evaluator.update(to_uint8(outputs["real"]), True, labels)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs on every rank: compute() is collective (never in a rank-zero-only hook).
        if self.evaluator is None or trainer.sanity_checking:
            return
        if not self.real_done:
            self._finish_real_pass(trainer)
        if self.evaluator.fake_count() < 2:
            rank_zero_warn("Fewer than 2 generated images this evaluation: no quality metrics")
        else:
            values = self.evaluator.compute()
            # Equal on every rank already; the mean over ranks keeps them (and Lightning quiet).
            pl_module.log_dict({f"val/{k}": v for k, v in values.items()}, sync_dist=True)
            if self.nearest_samples and self.plots_dir is not None:
                self._draw_nearest(trainer, pl_module)
        self.evaluator.reset()

    def _draw_nearest(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """plots/nearest.png: fixed-noise samples and their 3 nearest images of the real subset."""
        labels = getattr(pl_module, "fixed_labels", None)
        n = min(self.nearest_samples, len(pl_module.fixed_noise))
        pick = spread_over_classes(labels, n)  # a conditional model's classes in turn
        z = pl_module.fixed_noise[pick.to(pl_module.fixed_noise.device)]
        labels = None if labels is None else labels[pick.to(labels.device)]
        samples = to_uint8(pl_module.generate(z, labels))
        if not trainer.is_global_zero:  # the reference was gathered in compute(): no collective
            return
        features = self.evaluator.nn_features(samples)
        _, index = self.evaluator.nearest_real().nearest(features, NEAREST_SHOWN)
        real = trainer.val_dataloaders.dataset.images[index.flatten().cpu()]  # not the labels
        neighbours = real.view(*index.shape, *real.shape[1:]).to(samples.device)
        path = self.plots_dir / "nearest.png"
        draw_nearest(samples, neighbours, self.evaluator.nn_space, path)
        log_image(trainer, "plots/nearest", path)

    def _finish_real_pass(self, trainer: pl.Trainer) -> None:
        """Real statistics are final after the first evaluation; a complete pass is cached."""
        self.real_done = True
        if not self._write_cache:  # rank 0's decision, the same on every rank
            return
        features = self.evaluator.gather_real_features()  # collective
        if trainer.is_global_zero and len(features) == self._cache_settings["num_images"]:
            path = self._cache_file()
            cache.save_features(path, features, self._cache_settings)
            log.info("Real-image features cached in %s", path)


def _batches_done(trainer: pl.Trainer) -> int:
    """Training batches completed in the whole run (resumes included), on every rank alike."""
    return trainer.fit_loop.epoch_loop.total_batch_idx + 1


def _last_batch(trainer: pl.Trainer) -> bool:
    """Is the batch that just ended the run's last (max_epochs or max_steps reached)?"""
    loop = trainer.fit_loop
    max_steps = loop.max_steps
    if max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps:
        return True
    max_epochs = loop.max_epochs
    if max_epochs is None or max_epochs < 0 or trainer.current_epoch + 1 < max_epochs:
        return False
    return loop.epoch_loop.batch_progress.is_last_batch


def _total_batches(trainer: pl.Trainer) -> float:
    """The run's planned training batches (inf when open-ended); max_steps counts ~2 a batch."""
    loop, total = trainer.fit_loop, float("inf")
    if loop.max_epochs is not None and loop.max_epochs >= 0:
        total = loop.max_epochs * trainer.num_training_batches
    if loop.max_steps is not None and loop.max_steps >= 0:
        total = min(total, loop.max_steps / 2)
    return total


def _gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (collective); `[obj]` without DDP."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class BestQualityCheckpoint(ModelCheckpoint):
    """Keeps the checkpoint of the best evaluation by `QualityMetrics.primary_metric`.

    DCGAN quality often peaks, then collapses: this one survives next to last.ckpt. The metric is
    known only once the Inception weights are resolved, so it is chosen at setup; without quality
    metrics this callback saves nothing.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs = {"save_top_k": 1, "mode": "min", "save_on_train_epoch_end": False, **kwargs}
        super().__init__(monitor=None, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        quality = [c for c in trainer.callbacks if isinstance(c, QualityMetrics) and c.enabled]
        self.monitor = quality[0].primary_metric if quality else None
        super().setup(trainer, pl_module, stage)

    def _should_skip_saving_checkpoint(self, trainer: pl.Trainer) -> bool:
        return self.monitor is None or super()._should_skip_saving_checkpoint(trainer)
