"""The LightningModule that trains a DCGAN: alternating D and G steps with manual optimization."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.optim import Optimizer
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MeanMetric

from dcgan_lightning.divergence import POLICIES, finite_loss
from dcgan_lightning.models.diffaugment import DiffAugment
from dcgan_lightning.models.discriminator import Discriminator
from dcgan_lightning.models.generator import Generator
from dcgan_lightning.models.init import dcgan_init
from dcgan_lightning.models.losses import LOSSES, discriminator_loss, generator_loss
from dcgan_lightning.rng import rng_states, set_rng_states

OptimizerFactory = Callable[..., Optimizer]
TRAIN_LOGS = ("loss_d", "loss_g", "d_real", "d_fake")


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
        ema: dict[str, Any] | None = None,
        grad_clip_norm: float | None = None,
        on_nonfinite: str = "stop",
        channels_last: bool = False,
        compile: bool = False,
        num_fixed_samples: int = 64,
    ) -> None:
        super().__init__()
        if noise not in ("normal", "uniform"):
            raise ValueError(f"noise must be 'normal' or 'uniform', got {noise!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if on_nonfinite not in POLICIES:
            raise ValueError(f"on_nonfinite must be one of {POLICIES}, got {on_nonfinite!r}")
        if d_steps_per_g_step < 1:
            raise ValueError(f"d_steps_per_g_step must be >= 1, got {d_steps_per_g_step}")
        self.save_hyperparameters(ignore=["optimizer_g", "optimizer_d"], logger=False)
        self.automatic_optimization = False
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d

        self.generator = Generator(z_dim, image_size, channels, **generator)
        self.discriminator = Discriminator(image_size, channels, **discriminator)
        self.generator.apply(dcgan_init)
        self.discriminator.apply(dcgan_init)
        self.augment = DiffAugment(diffaugment)
        self.ema_generator = None
        if ema:
            self.ema_generator = AveragedModel(
                self.generator, multi_avg_fn=get_ema_multi_avg_fn(ema["decay"])
            )
        # Same on every rank and saved in checkpoints, so sample grids are comparable across epochs.
        fixed = self.sample_noise(num_fixed_samples, torch.Generator().manual_seed(0))
        self.register_buffer("fixed_noise", fixed)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        # Epoch means of the train logs, reduced over all ranks once per epoch (step values are
        # this rank's: no collective per step). A skipped non-finite step is left out of the mean.
        self.train_means = nn.ModuleDict({k: MeanMetric(nan_strategy="ignore") for k in TRAIN_LOGS})
        # The modules the training step calls: DDP wrappers under `GANDDPStrategy`, else themselves.
        self.train_nets: dict[str, nn.Module] = {"G": self.generator, "D": self.discriminator}

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
        seed = np.random.SeedSequence([torch.initial_seed(), self.global_rank, *keys])
        rng = torch.Generator(device=self.device)
        return rng.manual_seed(int(seed.generate_state(1, np.uint64)[0] >> 1))

    # -- sampling ------------------------------------------------------------------------------
    @property
    def sampling_generator(self) -> nn.Module:
        """The generator for samples, metrics and generation: the EMA copy when there is one."""
        return self.ema_generator.module if self.ema_generator is not None else self.generator

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], float32, from the sampling generator in eval mode."""
        net = self.sampling_generator
        was_training = net.training
        net.eval()
        try:
            return net(z.to(self.device)).float()
        finally:
            net.train(was_training)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, real: torch.Tensor, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        G, D = self.train_nets["G"], self.train_nets["D"]
        hp = self.hparams
        if hp.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        g_step = (batch_idx + 1) % hp.d_steps_per_g_step == 0

        # One generator forward, before any toggling, so the G step can reuse it.
        with torch.set_grad_enabled(g_step):
            fake = G(self.sample_noise(real.size(0), self._rng(0, self.global_step)))

        # (1) Update D: real -> 1, fake -> 0. fake.detach(): no gradient reaches G.
        with self.toggled_optimizer(opt_d):
            d_real = D(self.augment(real))
            d_fake = D(self.augment(fake.detach()))
            loss_d = discriminator_loss(hp.loss, d_real, d_fake, hp.label_smoothing)
            opt_d.zero_grad(set_to_none=True)
            if finite_loss(self.trainer, loss_d, "loss_d", hp.on_nonfinite):  # else stop or skip
                self.manual_backward(loss_d)
                opt_d.step()
        logs = {
            "loss_d": loss_d,
            "d_real": torch.sigmoid(d_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(d_fake.detach().float()).mean(),
        }

        # (2) Update G: make D call the fakes real. The bare D (not its DDP wrapper) with frozen
        # parameters: no D gradients are computed or all-reduced in this step.
        if g_step:
            with self.toggled_optimizer(opt_g):
                loss_g = generator_loss(hp.loss, self.discriminator(self.augment(fake)))
                opt_g.zero_grad(set_to_none=True)
                if finite_loss(self.trainer, loss_g, "loss_g", hp.on_nonfinite):
                    self.manual_backward(loss_g)
                    opt_g.step()
            self._update_ema()
            logs["loss_g"] = loss_g
        self._log_train(logs)

    def _log_train(self, logs: dict[str, torch.Tensor]) -> None:
        """`train/<name>_step` (this rank) and `train/<name>_epoch` (mean over all ranks)."""
        for name, value in logs.items():
            mean = self.train_means[name]
            mean(value.detach())
            self.log(f"train/{name}", mean, prog_bar=True, on_step=True, on_epoch=True)

    def _update_ema(self) -> None:
        if self.ema_generator is None:
            return
        if self.global_step < self.hparams.ema["start_step"]:
            self.ema_generator.n_averaged.zero_()  # the next update copies G: EMA tracks G exactly
        self.ema_generator.update_parameters(self.generator)
        # BatchNorm statistics are copied, not averaged: averaged ones lag ~1/(1-decay) steps
        # behind the weights, and the EMA generator draws flat grey images until they catch up.
        ema_buffers = self.ema_generator.module.buffers()
        for ema_buffer, buffer in zip(ema_buffers, self.generator.buffers()):
            ema_buffer.copy_(buffer)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Runs after AMP unscaling, so the norm is of the true gradients (Lightning issue #18089).
        if self.hparams.grad_clip_norm:
            self.clip_gradients(optimizer, self.hparams.grad_clip_norm, "norm")

    def configure_model(self) -> None:
        if self.hparams.compile:
            self.generator.compile()
            self.discriminator.compile()

    def configure_optimizers(self) -> list[Optimizer]:
        return [
            self.optimizer_g(params=self.generator.parameters()),
            self.optimizer_d(params=self.discriminator.parameters()),
        ]

    # -- checkpoints: the global RNGs (shuffle, DiffAugment, dropout, flips) for exact resume ---
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    # -- validation: hands real and generated images to the metric callbacks -------------------
    def validation_step(self, real: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        # Same z at every evaluation, so metric curves compare like with like.
        z = self.sample_noise(real.size(0), self._rng(1, batch_idx))
        return {"real": real.float(), "fake": self.generate(z)}
