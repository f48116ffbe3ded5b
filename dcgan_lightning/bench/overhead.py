"""What the loop around a GAN step costs: four loops over the same step, side by side.

With tiny nets (features 8, 32 px, batch 16, fp32) the step itself costs almost nothing, so the
per-batch time is the loop's own: (1) the raw PyTorch loop of the `training` section (the
pytorch/examples step); (2) a bare Lightning module, manual optimization with `toggled_optimizer`,
no logging, no progress bar (`BareGAN` below); (3) `train(cfg)` stripped as the bench ran it
before (no progress bar, CSV logs); (4) `train(cfg)` with the user's default config (Rich progress
bar, W&B offline, default callbacks), only the nets shrunk. The four run in one process, each
in its own thread, and take turns every `CHUNK` batches (`bench/turns.py`): on this VM, whose
speed drifts by +-25% over seconds, runs timed one after another differ by more than the
overheads compared. Each loop is timed over its window of batches after a warm-up, during its
turns only; each figure is a median over rounds. On a GPU the bench runs this at real
sizes too (`gpu_check`), where a step of ~2 ms makes the loop's cost show.
Run alone: `python -m dcgan_lightning.bench.overhead [--quick]`.
"""

from __future__ import annotations

import functools
import itertools
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from dcgan_lightning.bench import row, turns
from dcgan_lightning.bench.training import (
    BatchTimer,
    Case,
    TiledShapes,
    as_user,
    case_overrides,
    framework_config,
    model_overrides,
    quiet,
    raw_timing,
)
from dcgan_lightning.compose import compose_train_config
from dcgan_lightning.models.discriminator import Discriminator
from dcgan_lightning.models.generator import Generator
from dcgan_lightning.models.init import dcgan_init
from dcgan_lightning.models.losses import discriminator_loss, generator_loss
from dcgan_lightning.train import train

SECTION = "overhead"
# Torch threads unless `--threads` says otherwise. Intra-op threads started from a thread other
# than the main one run these tiny ops ~2.5x slower here (35 against 14 ms a batch at 2 threads:
# OpenMP's team of a new thread), and the loops take turns in threads; at 1 thread a loop runs
# there as fast as on the main thread, and its cost is single-threaded Python anyway.
THREADS = 1
TINY = Case("tiny nets", "32-true", channels_last=True, image_size=32, batch=16, features=8)
LOOPS = ("raw", "bare", "bench", "user")
CHUNK = 10  # batches a turn: the default `log_every_n_steps`, so each turn logs once
CLOCKS = ("wall", "cpu")
LABELS = {
    "raw": "raw PyTorch loop",
    "bare": "bare Lightning module",
    "bench": "train(cfg), bench-like (no progress bar, CSV)",
    "user": "train(cfg), user default (Rich bar, W&B offline)",
}


class BareGAN(pl.LightningModule):
    """The least a Lightning DCGAN needs: the same step, nothing logged, no metrics, no EMA."""

    def __init__(self, model: DictConfig, image_size: int, channels: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.cfg = model
        self.generator = Generator(model.z_dim, image_size, channels, **model.generator)
        self.discriminator = Discriminator(image_size, channels, **model.discriminator)
        self.generator.apply(dcgan_init)
        self.discriminator.apply(dcgan_init)
        self.memory_format = torch.channels_last if model.channels_last else torch.preserve_format
        self.to(memory_format=self.memory_format)

    def configure_model(self) -> None:
        if self.cfg.compile:
            self.generator.compile()
            self.discriminator.compile()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            instantiate(self.cfg.optimizer_g)(params=self.generator.parameters()),
            instantiate(self.cfg.optimizer_d)(params=self.discriminator.parameters()),
        ]

    def training_step(self, real: torch.Tensor, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        G, D = self.generator, self.discriminator
        real = real.contiguous(memory_format=self.memory_format)
        fake = G(torch.randn(real.size(0), self.cfg.z_dim, device=self.device))
        with self.toggled_optimizer(opt_d):
            loss_d = discriminator_loss(self.cfg.loss, D(real), D(fake.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()
        with self.toggled_optimizer(opt_g):
            loss_g = generator_loss(self.cfg.loss, D(fake))
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()


def bare_timing(case: Case, device: torch.device, warmup: int, n: int, tmp: Path) -> dict:
    """Wall and CPU seconds per batch of `BareGAN` under a plain Trainer, on the datamodule
    `train` builds (`Window.timing`)."""
    fit, timer = bare_fit(case, device, warmup, n, tmp)
    fit()
    return timer.window.timing()


def bare_fit(
    case: Case, device: torch.device, warmup: int, n: int, tmp: Path, turn: str | None = None
) -> tuple[Callable[[], None], BatchTimer]:
    """`BareGAN`'s fit, composed here (Hydra's compose is not thread-safe), run by the caller."""
    cfg = compose_train_config(case_overrides(case, device, warmup + n + 1), tmp)
    timer = BatchTimer(warmup, n, turn=turn)

    def fit() -> None:
        datamodule = instantiate(cfg.data)
        model = BareGAN(cfg.model, datamodule.image_size, datamodule.channels)
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=case.precision,
            max_epochs=1,
            limit_train_batches=warmup + n + 1,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            benchmark=device.type == "cuda",
            default_root_dir=tmp,
        )
        trainer.fit(model, datamodule=datamodule)

    return fit, timer


def window(device: torch.device, quick: bool) -> tuple[int, int, int]:
    """(warm-up, timed batches, repeats). Windows are whole multiples of the default
    `log_every_n_steps` (10), so periodic logging is counted at its true rate."""
    if device.type == "cuda":
        return (20, 100, 1) if quick else (30, 200, 3)
    return (10, 50, 1) if quick else (10, 200, 11)


def round_order(r: int) -> tuple[str, ...]:
    """The rotation of round `r`: bare and user adjacent, which of them first alternating."""
    pair = ("bare", "user") if r % 2 == 0 else ("user", "bare")
    return ("raw", "bench", *pair) if r % 4 < 2 else ("bench", "raw", *pair)


Times = dict[str, dict[str, list[float]]]  # clock ("wall", "cpu") -> loop -> s/batch per round


def measure(case: Case, device: torch.device, quick: bool = False) -> Times:
    """Wall and CPU seconds per batch of each of `LOOPS`, `repeats` rounds; in each round the
    four take turns, `CHUNK` batches at a time, in `round_order`."""
    warmup, n, repeats = window(device, quick)
    times: Times = {clock: {loop: [] for loop in LOOPS} for clock in CLOCKS}
    with tempfile.TemporaryDirectory() as tmp_dir, quiet(), as_user():
        tmp = Path(tmp_dir)
        images = TiledShapes(num_images=case.batch * (warmup + n + 1), image_size=case.image_size)
        images = images.load_images()
        model_cfg = compose_train_config(model_overrides(case), tmp).model
        for r in range(repeats):
            rotation = turns.Turns(round_order(r), warmup, n, CHUNK, device)
            turns.current = rotation  # the timers join it as they are built
            jobs = {}  # composed here, in the main thread
            for loop in rotation.members:
                run_dir = tmp / f"{r}-{loop}"
                if loop == "raw":
                    args = (case, model_cfg, images, device, warmup, n, rotation.window(loop))
                    jobs[loop] = functools.partial(raw_timing, *args)
                elif loop == "bare":
                    jobs[loop] = bare_fit(case, device, warmup, n, run_dir, loop)[0]
                else:
                    cfg = framework_config(case, device, warmup, n, run_dir, loop == "user", loop)
                    jobs[loop] = functools.partial(train, cfg)
            try:
                turns.run_in_turns(rotation, jobs)
            finally:
                turns.current = None
            for loop, clock in itertools.product(LOOPS, CLOCKS):
                times[clock][loop].append(rotation.timing(loop)[clock])
    return times


def rows(case: Case, device: torch.device, times: Times) -> list[dict]:
    """ms/batch of each loop, its ratio to the raw loop and to the bare Lightning module, and the
    target ratio; by wall time, then (on a CPU) by the process's CPU time."""
    what = (
        f"{case.image_size} px, features {case.features}, batch {case.batch}, {case.precision}"
        f"{', compile' if case.compile else ''}, {device.type}, {torch.get_num_threads()} threads, "
        f"median of {len(times['wall']['raw'])}"
    )
    out = []
    for clock in CLOCKS if device.type == "cpu" else ("wall",):
        by_loop, unit = times[clock], "ms/batch" if clock == "wall" else "CPU ms/batch"
        ms = {loop: 1e3 * statistics.median(t) for loop, t in by_loop.items()}
        for loop in LOOPS:
            spread = f"{1e3 * min(by_loop[loop]):.2f}-{1e3 * max(by_loop[loop]):.2f}"
            ratios = f"{ms[loop] / ms['raw']:.2f}x raw, {ms[loop] / ms['bare']:.2f}x bare"
            note = f"{ratios}; {what}; repeats {spread}"
            out.append(row(SECTION, f"{case.name}: {LABELS[loop]}", ms[loop], unit, note))
        # The VM's speed drifts over minutes; the two runs of one round are seconds apart, so the
        # median of per-round ratios is steadier than the ratio of medians.
        paired = sorted(u / b for u, b in zip(by_loop["user"], by_loop["bare"]))
        spread = f"{paired[0]:.2f}-{paired[-1]:.2f}"
        note = f"target <= 1.06; median of {len(paired)} rounds' ratios, {spread}"
        case_name = (
            f"{case.name}: user default / bare Lightning{'' if clock == 'wall' else ', CPU time'}"
        )
        out.append(row(SECTION, case_name, statistics.median(paired), "x", note))
    return out


def run(quick: bool = False) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return rows(TINY, device, measure(TINY, device, quick))


if __name__ == "__main__":
    from dcgan_lightning.bench.__main__ import table

    torch.set_num_threads(THREADS)
    print(table(run(quick="--quick" in sys.argv)))
