"""The LightningModule that trains a DCGAN: alternating D and G steps with manual optimization."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.optim import Optimizer

from dcgan_lightning.divergence import NonFiniteGuard
from dcgan_lightning.errors import UserError
from dcgan_lightning.models.ada import AdaptiveAugment
from dcgan_lightning.models.class_labels import ClassLabels
from dcgan_lightning.models.compile import compile_mode, compile_nets, mark_step_begin
from dcgan_lightning.models.diffaugment import DiffAugment
from dcgan_lightning.models.discriminator import Discriminator
from dcgan_lightning.models.ema import EMA
from dcgan_lightning.models.generator import Generator
from dcgan_lightning.models.init import dcgan_init
from dcgan_lightning.models.losses import LOSSES, d_outputs, discriminator_loss, generator_loss
from dcgan_lightning.models.resume_settings import apply_on_resume
from dcgan_lightning.models.standing_stats import StandingStats
from dcgan_lightning.models.train_logs import TrainLogs
from dcgan_lightning.rng import gather_rng_states, keyed_generator, restore_rng_states, seed_rank
from dcgan_lightning.strategy import sync_buffers

OptimizerFactory = Callable[..., Optimizer]
# Lightning asks for sync_dist=True on epoch-level values; ours are reduced before they are logged.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('train/")


class GAN(LightningModule):
    """DCGAN training: per batch one G forward, a D step on real and detached fake, then a G step.

    `image_size` and `channels` come from the datamodule (see `train.train`), never from the model
    config. Optimizers arrive as Hydra `_partial_` factories, bound in `configure_optimizers`.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        generator: dict[str, Any],
        discriminator: dict[str, Any],
        optimizer_g: OptimizerFactory,
        optimizer_d: OptimizerFactory,
        z_dim: int = 100,
        noise: str = "normal",
        loss: str = "bce",
        label_smoothing: float = 0.0,
        d_steps_per_g_step: int = 1,
        diffaugment: Sequence[str] = (),
        ada: dict[str, Any] | None = None,
        ema: dict[str, Any] | None = None,
        grad_clip_norm: float | None = None,
        on_nonfinite: str = "stop",
        channels_last: bool = False,
        compile: bool | str = False,
        num_fixed_samples: int = 64,
        num_classes: int = 0,
        conditional: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if noise not in ("normal", "uniform"):
            raise ValueError(f"noise must be 'normal' or 'uniform', got {noise!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if label_smoothing and loss != "bce":
            raise UserError(
                f"model.label_smoothing={label_smoothing} works with model.loss=bce only, not "
                f"{loss!r}: hinge and least-squares losses have no target to smooth"
            )
        compile_mode(compile)  # a bad value fails here, before any training
        if d_steps_per_g_step < 1:
            raise ValueError(f"d_steps_per_g_step must be >= 1, got {d_steps_per_g_step}")
        self.save_hyperparameters(ignore=["optimizer_g", "optimizer_d"], logger=False)
        self.automatic_optimization = False
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d

        self.labels = ClassLabels(num_classes, **conditional) if conditional is not None else None
        if self.labels is None:
            self.generator = Generator(z_dim, image_size, channels, **generator)
            self.discriminator = Discriminator(image_size, channels, **discriminator)
        else:
            self.generator, self.discriminator = self.labels.nets(
                z_dim, image_size, channels, generator, discriminator
            )
        self.generator.apply(dcgan_init)
        self.discriminator.apply(dcgan_init)
        self.augment = AdaptiveAugment(diffaugment, **ada) if ada else DiffAugment(diffaugment)
        self.ema_generator = EMA(self.generator, **ema) if ema else None
        self.standing_stats = StandingStats()  # BatchNorm statistics of the weights sampled
        # Same on every rank and saved in checkpoints, so sample grids are comparable across epochs.
        fixed = self.sample_noise(num_fixed_samples, torch.Generator().manual_seed(0))
        if self.labels is not None:  # a row per class: the same z in every row
            fixed, fixed_labels = self.labels.grid(fixed)
            self.register_buffer("fixed_labels", fixed_labels)
        self.register_buffer("fixed_noise", fixed)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.nonfinite = NonFiniteGuard(on_nonfinite)
        self.train_logs = TrainLogs()  # step values and epoch means, no sync per step
        self.run_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        # The modules the training step calls: DDP wrappers under `GANDDPStrategy`, else themselves.
        self.train_nets: dict[str, nn.Module] = {"G": self.generator, "D": self.discriminator}
        self.resumed_hparams: dict[str, Any] | None = None  # a resumed fit: the checkpoint's

    # -- noise ---------------------------------------------------------------------------------
    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z of shape (n, z_dim): N(0, 1) or U(-1, 1), on the generator's device."""
        device = generator.device if generator is not None else self.device
        shape = (n, self.hparams.z_dim)
        if self.hparams.noise == "uniform":
            return torch.rand(shape, generator=generator, device=device) * 2 - 1
        return torch.randn(shape, generator=generator, device=device)

    def _rng(self, *keys: int) -> torch.Generator:
        """An RNG seeded from (run seed, rank, *keys): z differs per rank and resumes exactly."""
        return keyed_generator(self.device, self.run_seed, self.global_rank, *keys)

    # -- sampling ------------------------------------------------------------------------------
    @property
    def sampling_generator(self) -> nn.Module:
        """The generator for samples, metrics and generation: the EMA copy when there is one."""
        return self.ema_generator.module if self.ema_generator is not None else self.generator

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1], float32, from the sampling generator in eval mode (of class
        `labels` for a conditional model), its BatchNorms normalising with statistics of its
        current weights (`StandingStats`): running ones lag the weights, an EMA's are another
        net's. Images do not depend on the batch they are drawn in."""
        net = self.sampling_generator
        was_training = net.training
        net.eval()
        try:
            with self.standing_stats.applied(net, self._sample_inputs):
                return net(z.to(self.device), *self.conditions(labels)).float()
        finally:
            net.train(was_training)

    def fixed_samples(self) -> tuple[torch.Tensor, int | None]:
        """G of the fixed noise (and labels) for sample grids, and the grid's row length (None:
        any; conditional: a row per class)."""
        labels = getattr(self, "fixed_labels", None)
        nrow = self.labels.grid_columns(len(self.fixed_noise)) if self.labels else None
        return self.generate(self.fixed_noise, labels), nrow

    # -- labels: the identity for an unconditional model ---------------------------------------
    def conditions(self, labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The nets' extra arguments: `(labels,)` for a conditional model, else none."""
        if self.labels is None:
            return ()
        if labels is None:  # a caller that has no classes to give
            raise UserError("this model is conditional: its G and D need class labels")
        return (labels.to(self.device),)

    def _split(self, batch: Any) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Images, and the conditions of the real batch (labelled data: `(images, labels)`)."""
        real, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
        if self.labels is not None and labels is None:
            raise UserError("model.conditional needs labelled batches: set data.labels=true")
        return real, self.conditions(labels)

    def _sample_inputs(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, ...]:
        """z, then (conditional) fake labels, both from `rng`: per rank, resumable."""
        z = self.sample_noise(n, rng)
        return (z, self.labels.sample(n, rng)) if self.labels is not None else (z,)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        G, D = self.train_nets["G"], self.train_nets["D"]
        hp, guard = self.hparams, self.nonfinite
        mark_step_begin(hp.compile)  # CUDA graphs: the last step's outputs are free
        real, y_real = self._split(batch)  # y_*: () unconditional, else (labels,)
        if hp.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        # Batches over the whole run (batch_idx restarts each epoch), restored on resume.
        g_step = (self.trainer.fit_loop.total_batch_idx + 1) % hp.d_steps_per_g_step == 0

        # One generator forward, before any toggling, so the G step can reuse it.
        z, *y_fake = self._sample_inputs(real.size(0), self._rng(0, self.global_step))
        with torch.set_grad_enabled(g_step):
            fake = G(z, *y_fake)

        # (1) Update D: real -> 1, fake -> 0. fake.detach(): no gradient reaches G.
        with self.toggled_optimizer(opt_d):
            d_real = D(self.augment(real), *y_real)
            d_fake = D(self.augment(fake.detach()), *y_fake)
            loss_d = discriminator_loss(hp.loss, d_real, d_fake, hp.label_smoothing)
            opt_d.zero_grad(set_to_none=True)
            if guard.finite(self.trainer, loss_d, "loss_d"):  # `skip` leaves the update out
                self.manual_backward(loss_d)
                opt_d.step()
        logs = {"loss_d": loss_d, **d_outputs(hp.loss, d_real, d_fake)}
        if hp.ada:  # r_t from D(augmented real); one all-reduce every `interval` batches
            self.augment.observe(d_real)
            self.augment.adjust(real.size(0), self.trainer.world_size)
            logs |= {"ada_p": self.augment.p, "r_t": self.augment.r_t}

        # (2) Update G: make D call the fakes real. The bare D (not its DDP wrapper) with frozen
        # parameters: no D gradients are computed or all-reduced in this step.
        if g_step:
            with self.toggled_optimizer(opt_g):
                loss_g = generator_loss(hp.loss, self.discriminator(self.augment(fake), *y_fake))
                opt_g.zero_grad(set_to_none=True)
                if guard.finite(self.trainer, loss_g, "loss_g"):
                    self.manual_backward(loss_g)
                    opt_g.step()
                    self._update_ema()
            logs["loss_g"] = loss_g
        self._log_train(logs)

    def _log_train(self, logs: dict[str, torch.Tensor]) -> None:
        """Device-side epoch sums every step; `train/<name>_step` (this rank's values) only on the
        batches Lightning sends to the loggers, where the divergence flag is read too."""
        self.train_logs.add(logs)
        if TrainLogs.logging_now(self.trainer):
            self.nonfinite.check(self.trainer)
            TrainLogs.log_step(self.trainer, logs)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # On the epoch's last batch, so that callbacks' `on_train_epoch_end` (plots) see them.
        if self.trainer.fit_loop.epoch_loop._is_training_done:
            self.nonfinite.check(self.trainer)
            means = self.train_logs.epoch_means(self.trainer)  # one collective per epoch
            epoch = {f"train/{k}_epoch": v for k, v in means.items()}
            # Reduced already, equal on every rank: sync_dist=True would reduce again, lazily, in
            # whichever hook first reads callback_metrics (a hang if that runs on rank 0 only).
            self.log_dict(epoch, on_step=False, on_epoch=True)

    def on_train_start(self) -> None:
        if self.resumed_hparams is not None:  # the command line's settings, each change logged
            optimizers = dict(zip(("optimizer_g", "optimizer_d"), self.trainer.optimizers))
            apply_on_resume(self.resumed_hparams, self.hparams, optimizers, self.global_rank == 0)
            self.resumed_hparams = None

    def on_train_epoch_end(self) -> None:
        sync_buffers(self)

    def on_validation_epoch_start(self) -> None:
        sync_buffers(self)  # every rank's fakes come from the checkpointed statistics
        # Every rank samples with rank 0's BatchNorm statistics for the weights evaluated.
        self.standing_stats.agree(
            self.sampling_generator, self._sample_inputs, self.trainer.strategy.broadcast
        )

    def _update_ema(self) -> None:
        if self.ema_generator is not None:
            self.ema_generator.update(self.generator, self.global_step)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Runs after AMP unscaling, so the norm is of the true gradients (Lightning issue #18089).
        if self.hparams.grad_clip_norm:
            self.clip_gradients(optimizer, self.hparams.grad_clip_norm, "norm")

    def configure_model(self) -> None:
        # Where training runs (the model may not be there yet); without a trainer (loading a
        # checkpoint), where the model is.
        attached = self._trainer is not None
        device = self.trainer.strategy.root_device.type if attached else self.device.type
        compile_nets(self.generator, self.discriminator, self.hparams.compile, device)

    def configure_optimizers(self) -> list[Optimizer]:
        return [
            self.optimizer_g(params=self.generator.parameters()),
            self.optimizer_d(params=self.discriminator.parameters()),
        ]

    # -- checkpoints: every rank's RNG states (shuffle, DiffAugment, dropout, flips) ------------
    def setup(self, stage: str) -> None:
        # After the weights are built (equal on every rank), before a checkpoint is restored.
        # PL_GLOBAL_SEED: `seed_everything`'s seed, also in spawned ranks.
        self.run_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        seed_rank(self.run_seed, self.global_rank)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if self.labels is not None and getattr(datamodule, "labels", None) is not None:
            self.labels.use_data(datamodule.class_names, datamodule.class_counts)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None:  # on every rank, together: both calls below are collective
            self.nonfinite.check(self.trainer)  # never write a checkpoint after a bad loss
        checkpoint["rng_states"] = gather_rng_states()
        if "state_dict" in checkpoint:
            # The sampling net's BatchNorm statistics for its weights (an EMA's own hold G's;
            # G's lag): what loads the checkpoint for generation draws what the run's grids
            # showed. Training never reads them (train mode normalises by the batch).
            net, prefix = self.sampling_generator, "generator."
            if self.ema_generator is not None:
                prefix = "ema_generator.module."
            with self.standing_stats.applied(net, self._sample_inputs):
                for name, buf in net.named_buffers():
                    if name.endswith(("running_mean", "running_var")):
                        checkpoint["state_dict"][prefix + name] = buf.clone()
        if self.labels is not None:
            checkpoint["classes"] = self.labels.describe()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The run's RNG states only for a Trainer resuming the fit: `load_from_checkpoint` (no
        # trainer) or `validate(ckpt_path=...)` leaves the caller's streams alone.
        if self._resuming_fit() and "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"], self.global_rank, self._world_size())
        if self._resuming_fit():  # compared once the optimizers are restored: `on_train_start`
            self.resumed_hparams = checkpoint.get("hyper_parameters", {})
        if self.labels is not None and "classes" in checkpoint:
            self.labels.names = list(checkpoint["classes"]["names"])

    def _resuming_fit(self) -> bool:
        return self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING

    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    # -- validation: hands real and generated images to the metric callbacks -------------------
    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        # Same z at every evaluation, so metric curves compare like with like. A conditional model
        # draws the real batch's classes: per-class metrics compare equal counts.
        real, y_real = self._split(batch)
        z = self.sample_noise(real.size(0), self._rng(1, batch_idx))
        out = {"real": real.float(), "fake": self.generate(z, *y_real)}
        return out | ({"labels": y_real[0]} if y_real else {})
