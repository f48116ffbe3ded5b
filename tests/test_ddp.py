"""DDP for a GAN, for real: two gloo CPU processes through `train(cfg)` with `trainer=ddp_sim`."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import LightningEnvironment, TorchElasticEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies.launchers import (
    _MultiProcessingLauncher,
    _SubprocessScriptLauncher,
)
from omegaconf import open_dict
from torch.nn.parallel import DistributedDataParallel

from dcgan_lightning.models.gan_module import GAN
from dcgan_lightning.strategy import GANDDPStrategy
from dcgan_lightning.train import train
from tests.conftest import REPO, requires_cuda

BATCHES = 6  # per rank: 12 optimizer steps


class RecordRank(Callback):
    """Each rank saves to `dirpath/rank<r>.pt` its initial and final G and D parameters, every z
    its training steps drew, its fixed noise, what it trained through, its global step, its own
    mean `loss_d` over the epoch and the logged epoch mean.

    Lives here at module level: spawned ranks unpickle it by name.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = {n: p.detach().clone() for n, p in params(pl_module).items()}
        self.z: list[torch.Tensor] = []
        self.hook = pl_module.generator.register_forward_pre_hook(self.record_z)
        self.reduced = {"G": [0], "D": [0]}  # gradient elements each wrapper all-reduced
        for name, wrapper in pl_module.train_nets.items():
            if isinstance(wrapper, DistributedDataParallel):
                wrapper.register_comm_hook(self.reduced[name], counting_allreduce)

    def record_z(self, module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        if module.training:  # training steps; sample grids run in eval mode
            self.z.append(args[0].detach().clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        totals = pl_module.train_logs.totals  # this rank's sums, before the epoch's end resets them
        self.local_loss_d = float(totals[0, 0] / totals[1, 0])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.hook.remove()
        record = {
            "initial": self.initial,
            "final": {n: p.detach().clone() for n, p in params(pl_module).items()},
            "z": torch.stack(self.z),
            "fixed_noise": pl_module.fixed_noise.clone(),
            "wrappers": {k: type(v).__name__ for k, v in pl_module.train_nets.items()},
            "reduced": {k: v[0] for k, v in self.reduced.items()},
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "local_loss_d": self.local_loss_d,
            "logged_loss_d_epoch": float(trainer.callback_metrics["train/loss_d_epoch"]),
        }
        torch.save(record, self.dirpath / f"rank{trainer.global_rank}.pt")


def counting_allreduce(count, bucket):  # DDP rejects a `bucket` annotation that is a string
    """DDP's default gradient averaging, counting the elements it sends."""
    count[0] += bucket.buffer().numel()
    work = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def params(model: pl.LightningModule) -> dict[str, torch.Tensor]:
    return {
        n: p for n, p in model.named_parameters() if n.startswith(("generator", "discriminator"))
    }


@pytest.mark.slow
def test_ddp_sim_two_ranks_stay_in_sync(make_cfg, tmp_path) -> None:
    cfg = make_cfg("trainer=ddp_sim", "logger=csv", "metrics=none")
    with open_dict(cfg):
        cfg.trainer.limit_train_batches = BATCHES
        cfg.data.num_images = 2 * BATCHES * cfg.data.batch_size
        cfg.callbacks.record = {"_target_": f"{__name__}.RecordRank", "dirpath": str(tmp_path)}
    metrics = train(cfg)

    assert math.isfinite(metrics["train/loss_d_step"]) and math.isfinite(
        metrics["train/loss_g_step"]
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for rank in ranks:
        assert rank["world_size"] == 2 and rank["global_step"] == 2 * BATCHES
        assert rank["wrappers"] == {"G": "DistributedDataParallel", "D": "DistributedDataParallel"}
        assert len(rank["z"]) == BATCHES
    r0, r1 = ranks
    # Exactly the parameters each step updates were all-reduced: D's in the D step, G's in the G's.
    size = {k: sum(p.numel() for n, p in r0["final"].items() if n.startswith(k)) for k in "gd"}
    assert r0["reduced"] == {"G": BATCHES * size["g"], "D": BATCHES * size["d"]}
    assert r0["final"].keys() == r1["final"].keys()
    assert any(n.startswith("generator") for n in r0["final"])
    assert any(n.startswith("discriminator") for n in r0["final"])
    for name, p in r0["final"].items():
        assert torch.equal(p, r1["final"][name]), f"{name} differs between ranks"
        assert not torch.equal(p, r0["initial"][name]), f"{name} was not updated"
        assert torch.equal(r0["initial"][name], r1["initial"][name])
    assert not torch.equal(r0["z"], r1["z"])  # each rank draws its own noise...
    for z0, z1 in zip(r0["z"], r1["z"], strict=True):
        assert not torch.allclose(z0, z1)
    # The same sample-grid noise on every rank: tests/test_ranks.py disturbs rank 1's and checks
    # that it is brought back (here both ranks build it alike, so equality would prove nothing).
    # Epoch means are over both ranks' batches, on every rank.
    assert r0["local_loss_d"] != r1["local_loss_d"]
    both = (r0["local_loss_d"] + r1["local_loss_d"]) / 2
    assert r0["logged_loss_d_epoch"] == pytest.approx(both, rel=1e-6)
    assert r1["logged_loss_d_epoch"] == pytest.approx(both, rel=1e-6)

    # Rank 0's checkpoint holds the bare nets: it loads into a plain GAN without DDP prefixes.
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints/last.ckpt", weights_only=False)
    model = GAN(
        cfg.data.image_size, cfg.data.channels, cfg.model.generator, cfg.model.discriminator,
        optimizer_g=None, optimizer_d=None, num_fixed_samples=cfg.model.num_fixed_samples,
    )  # fmt: skip
    model.load_state_dict(state["state_dict"])
    for name, p in r0["final"].items():
        assert torch.equal(model.get_parameter(name), p)


class RecordEMA(Callback):
    """Each rank saves to `dirpath/ema_rank<r>.pt` its G and EMA generator when training starts
    (after DDP's broadcast) and ends. Module level: the ranks import it by name."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = self.nets(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {"start": self.start, "end": self.nets(pl_module)}
        torch.save(record, self.dirpath / f"ema_rank{trainer.global_rank}.pt")

    @staticmethod
    def nets(pl_module: pl.LightningModule) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "G": {n: p.detach().clone() for n, p in pl_module.generator.named_parameters()},
            "EMA": {
                n: p.detach().clone() for n, p in pl_module.ema_generator.module.named_parameters()
            },
        }


@pytest.mark.slow
def test_popen_ranks_without_a_seed_start_one_ema_from_the_broadcast_weights(tmp_path) -> None:
    """seed=null and ranks started as torchrun/SLURM would (`popen`: each rank runs the command
    line, so each builds its own random weights): DDP broadcasts rank 0's G and D, and the EMA
    generator must start from those on every rank too."""
    overrides = [
        "trainer=ddp_sim", "trainer.strategy.start_method=popen", "seed=null", "logger=csv",
        "metrics=none", "model.ema={decay:0.9,start_step:0}", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2", "data.num_images=64", "data.batch_size=16",
        "model.generator.features=8", "model.discriminator.features=8",
        "model.num_fixed_samples=16", "~callbacks.progress_bar",
        f"+callbacks.record_ema={{_target_:{__name__}.RecordEMA,dirpath:'{tmp_path}'}}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "dcgan_lightning", *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"ema_rank{r}.pt") for r in (0, 1))
    for name, p in r0["start"]["G"].items():
        assert torch.equal(p, r1["start"]["G"][name]), name  # DDP's broadcast
        assert torch.equal(r0["start"]["EMA"][name], p), f"rank 0's EMA {name}"  # G's...
        assert torch.equal(r1["start"]["EMA"][name], p), f"rank 1's EMA {name}"  # ...everywhere
    for name, p in r0["end"]["EMA"].items():
        assert torch.equal(p, r1["end"]["EMA"][name]), name


class RecordWrapping(Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.wrappers = {k: type(v) for k, v in pl_module.train_nets.items()}
        self.norms = {type(m) for m in pl_module.modules() if "BatchNorm" in type(m).__name__}


@requires_cuda
@pytest.mark.gpu
def test_ddp_config_on_one_gpu_with_sync_batchnorm(make_cfg) -> None:
    """`trainer=ddp` on one GPU: G and D each in a DDP, SyncBatchNorm during fit only."""
    cfg = make_cfg("trainer=ddp", "trainer.devices=1", "trainer.sync_batchnorm=true")
    record = RecordWrapping()
    pl.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=datamodule.image_size, channels=datamodule.channels)
    trainer = instantiate(cfg.trainer, callbacks=[record], logger=False)
    trainer.fit(model, datamodule=datamodule)
    assert math.isfinite(float(trainer.callback_metrics["train/loss_d_step"]))
    assert record.wrappers == {"G": DistributedDataParallel, "D": DistributedDataParallel}
    assert record.norms == {torch.nn.SyncBatchNorm}
    assert all(not isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert model.train_nets == {"G": model.generator, "D": model.discriminator}


def test_gan_ddp_strategy_rejects_comm_hooks() -> None:
    strategy = GANDDPStrategy(ddp_comm_hook=lambda state, bucket: None)
    with pytest.raises(ValueError, match="ddp_comm_hook"):
        strategy.configure_ddp()


@pytest.mark.parametrize(
    ("environment", "launcher"),
    [
        (LightningEnvironment, _MultiProcessingLauncher),
        (TorchElasticEnvironment, _SubprocessScriptLauncher),
    ],
)
def test_spawn_gives_way_to_ranks_started_outside(environment, launcher) -> None:
    """`trainer=ddp_sim` spawns its ranks, except under torchrun or SLURM, which started them."""
    strategy = GANDDPStrategy(start_method="spawn", cluster_environment=environment())
    strategy._configure_launcher()
    assert type(strategy.launcher) is launcher
