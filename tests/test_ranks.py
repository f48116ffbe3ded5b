"""What only several ranks show, with 2 gloo CPU processes (`trainer=ddp_sim`): every rank its own
random streams, exact resume of each rank's streams, no collective per batch, buffers that agree."""

from __future__ import annotations

import itertools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict
from torch import nn

from dcgan_lightning.data.base import ImageDataModule
from dcgan_lightning.train import train
from tests.test_ddp import params

# Everything that draws from the global RNGs is on: flips, DiffAugment, dropout (fp32: bitwise).
STREAMS = [
    "trainer=ddp_sim",
    "logger=none",
    "metrics=none",
    "trainer.precision=32-true",
    "model.diffaugment=[color,translation,cutout]",
    "model.discriminator.dropout=0.3",
    "data.flip=true",
    "model.ema={decay: 0.9, start_step: 0}",
]
BATCHES = 3  # per rank and epoch


class HalfWhite(ImageDataModule):
    """Images whose right half is white: a flipped image in a batch shows which way it faces."""

    fingerprint = "half-white"

    def __init__(self, num_images: int = 96, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_images = num_images

    def load_images(self) -> torch.Tensor:
        images = torch.zeros(self.num_images, self.channels, self.image_size, self.image_size)
        images[..., self.image_size // 2 :] = 255
        return images.to(torch.uint8)


class ProbeAugment(nn.Module):
    """The model's DiffAugment, also recording what it does to a probe batch of ones."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        state = torch.get_rng_state()
        self.seen.append(self.inner(torch.ones(4, 3, 8, 8)))
        torch.set_rng_state(state)  # the probe leaves the training's stream as it was
        return out


class Record(Callback):
    """Each rank saves what it drew and what it ended with to `dirpath/<tag>_rank<r>.pt`."""

    def __init__(self, dirpath: str, tag: str) -> None:
        self.path = Path(dirpath)
        self.tag = tag

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flips, self.counts = [], []
        self.cpu_state = torch.get_rng_state().clone()
        pl_module.augment = self.probe = ProbeAugment(pl_module.augment)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.flips.append(batch[:, 0, 0, 0] > 0)  # white on the left: flipped
        self.counts.append(sum(COUNTS.values()))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        nets = (pl_module.generator, pl_module.discriminator, pl_module.ema_generator)
        counts = self.counts
        record = {
            "flips": torch.stack(self.flips),
            "augments": torch.stack(self.probe.seen),
            "cpu_state": self.cpu_state,
            "collectives": [b - a for a, b in itertools.pairwise(counts)],  # from batch to batch
            "params": {n: p.detach().clone() for n, p in params(pl_module).items()},
            "buffers": {
                f"{i}.{n}": b.clone() for i, net in enumerate(nets) for n, b in net.named_buffers()
            },
            "fixed_noise": pl_module.fixed_noise.clone(),
        }
        torch.save(record, self.path / f"{self.tag}_rank{trainer.global_rank}.pt")


COUNTS: dict[str, int] = {}
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_object", "barrier",
               "reduce", "_broadcast_coalesced", "all_to_all", "scatter", "gather")  # fmt: skip


class CountCollectives(Callback):
    """Wraps every Python-level `torch.distributed` collective to count its calls (DDP's gradient
    all-reduce runs in its C++ reducer and is not counted)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for name in COLLECTIVES:
            real = getattr(dist, name)

            def counted(*args, _real=real, _name=name, **kwargs):
                COUNTS[_name] = COUNTS.get(_name, 0) + 1
                return _real(*args, **kwargs)

            setattr(dist, name, counted)


class DisturbRankOne(Callback):
    """Rank 1 starts with other sample noise and G statistics: the sync must undo it."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 1:
            pl_module.fixed_noise.add_(1.0)
            for buffer in pl_module.generator.buffers():
                buffer.add_(1)


def streams_cfg(make_cfg, out: Path, tag: str, epochs: int = 1) -> DictConfig:
    cfg = make_cfg(*STREAMS)
    with open_dict(cfg):
        cfg.trainer.max_epochs = epochs
        cfg.data = {
            "_target_": f"{__name__}.HalfWhite", "image_size": 32, "channels": 3,
            "batch_size": 16, "flip": True, "num_images": 2 * BATCHES * 16,
        }  # fmt: skip
        cfg.trainer.limit_train_batches = BATCHES
        cfg.trainer.log_every_n_steps = 1000  # no logging inside the measured batches
        cfg.callbacks.model_checkpoint.every_n_epochs = 1
        cfg.callbacks.count = {"_target_": f"{__name__}.CountCollectives"}
        cfg.callbacks.record = {"_target_": f"{__name__}.Record", "dirpath": str(out), "tag": tag}
        cfg.callbacks.disturb = {"_target_": f"{__name__}.DisturbRankOne"}
        for name in ("training_plots", "sample_grid", "best_checkpoint"):
            cfg.callbacks.pop(name, None)
    return cfg


def ranks(out: Path, tag: str) -> list[dict]:
    return [torch.load(out / f"{tag}_rank{r}.pt") for r in (0, 1)]


@pytest.mark.slow
def test_each_rank_draws_its_own_flips_and_augmentations_and_no_collective_per_batch(
    make_cfg, tmp_path: Path
) -> None:
    train(streams_cfg(make_cfg, tmp_path, "run"))
    r0, r1 = ranks(tmp_path, "run")
    assert r0["flips"].shape == (BATCHES, 16)
    assert 0.2 < r0["flips"].float().mean() < 0.8  # flips happen, about half of the images
    assert not torch.equal(r0["flips"], r1["flips"])  # ...and each rank draws its own
    assert not torch.equal(r0["augments"], r1["augments"])  # translation/cutout masks too
    assert not torch.equal(r0["cpu_state"], r1["cpu_state"])  # dropout's stream as well
    # From batch to batch, past the first (DDP's first-iteration setup), no Python-level
    # collective runs but Lightning's own SIGTERM broadcast (one per batch, its training loop).
    assert r0["collectives"][1:] == r1["collectives"][1:] == [1] * (BATCHES - 2)
    # Rank 0's buffers everywhere: G's BatchNorm statistics, the EMA's, D's, the sample noise.
    assert r0["buffers"].keys() == r1["buffers"].keys()
    for name, buffer in r0["buffers"].items():
        assert torch.equal(buffer, r1["buffers"][name]), name
    assert torch.equal(r0["fixed_noise"], r1["fixed_noise"])
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name


@pytest.mark.slow
def test_two_rank_resume_restores_each_ranks_streams_exactly(make_cfg, tmp_path: Path) -> None:
    whole = streams_cfg(make_cfg, tmp_path / "whole", "whole", epochs=2)
    (tmp_path / "whole").mkdir()
    train(whole)
    (tmp_path / "cut").mkdir()
    first = streams_cfg(make_cfg, tmp_path / "cut", "first")
    with open_dict(first):
        first.paths.output_dir = str(tmp_path / "cut" / "run")
    train(first)
    last = tmp_path / "cut" / "run" / "checkpoints" / "last.ckpt"
    assert len(torch.load(last, weights_only=True)["rng_states"]) == 2  # one entry per rank
    resumed = streams_cfg(make_cfg, tmp_path / "cut", "resumed", epochs=2)
    with open_dict(resumed):
        resumed.paths.output_dir = first.paths.output_dir
        resumed.ckpt_path = str(last)
        resumed.callbacks.pop("disturb")  # rank 1 restores its own state, nothing to undo
    train(resumed)
    for a, b in zip(ranks(tmp_path / "whole", "whole"), ranks(tmp_path / "cut", "resumed")):
        assert torch.equal(a["flips"][BATCHES:], b["flips"])  # epoch 2's draws, rank by rank
        for name, p in a["params"].items():
            assert torch.equal(p, b["params"][name]), name
        for name, buffer in a["buffers"].items():
            assert torch.equal(buffer, b["buffers"][name]), name
