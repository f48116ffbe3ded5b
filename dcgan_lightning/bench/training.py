"""Training throughput: `train(cfg)` against a plain PyTorch loop of the same DCGAN, side by side.

Both sides build the project's Generator and Discriminator from the same model config, with the
same init, optimizers, batch, precision and memory format, and take the same step: one G forward,
a D step on real and detached fake, a G step with D frozen, the logged statistics computed. The
framework side is `train(cfg)` with the user's default config (Rich progress bar, W&B offline,
default callbacks), so its ratio is what a user gets. Raw and framework runs alternate, so drift
on a shared machine hits both alike; warm-up batches are excluded and every figure is a median of
repeats of a timed window of batches.
Run alone: `python -m dcgan_lightning.bench.training [--quick]`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
import wandb
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from dcgan_lightning.bench import row, turns
from dcgan_lightning.bench.turns import TurnWindow, now
from dcgan_lightning.compose import compose_train_config
from dcgan_lightning.data.shapes import ShapesDataModule
from dcgan_lightning.models.discriminator import Discriminator
from dcgan_lightning.models.generator import Generator
from dcgan_lightning.models.init import dcgan_init
from dcgan_lightning.models.losses import discriminator_loss, generator_loss
from dcgan_lightning.precision import amp_precision
from dcgan_lightning.train import train

SECTION = "training"
BATCH = 64
GPU_BATCH = 128  # a GPU step at batch 64 is too short to measure the loop around it
GPU_SIZES = (64, 128, 256)


DISTINCT_IMAGES = 512  # drawn once per size and process, then repeated


@functools.lru_cache(maxsize=4)
def _drawn(distinct: int, seed: int, image_size: int, channels: int) -> torch.Tensor:
    shapes = ShapesDataModule(distinct, seed, image_size=image_size, channels=channels)
    return shapes.load_images()


class TiledShapes(ShapesDataModule):
    """`num_images` shapes that repeat `distinct` drawn ones, drawn once per process.

    A 256 px shape takes ~10-50 ms to draw and a bench run needs thousands; what a batch costs
    the loop does not depend on which pixels it holds.
    """

    def __init__(self, distinct: int = DISTINCT_IMAGES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.distinct = distinct

    @property
    def fingerprint(self) -> str:
        return f"{super().fingerprint}-tiled{self.distinct}"

    def load_images(self) -> torch.Tensor:
        distinct = min(self.distinct, self.num_images)
        drawn = _drawn(distinct, self.seed, self.image_size, self.channels)
        return drawn.repeat(-(-self.num_images // len(drawn)), 1, 1, 1)[: self.num_images]


@dataclass(frozen=True)
class Case:
    """One configuration both sides run; `features` is G's and D's base width."""

    name: str
    precision: str
    channels_last: bool
    image_size: int = 64
    compile: bool = False
    batch: int = BATCH
    features: int = 64


def cases(device: str) -> list[Case]:
    """fp32, mixed precision and channels_last at 64 px; on GPU (batch 128) also 128/256 px, each
    size with and without compile."""
    amp = amp_precision("gpu" if device == "cuda" else "cpu")
    amp = "bf16-mixed" if amp == "32-true" else amp  # measure bf16 even where it is not the default
    batch = GPU_BATCH if device == "cuda" else BATCH
    base = [
        Case("fp32", "32-true", False, batch=batch),
        Case(amp, amp, False, batch=batch),
        Case(f"{amp} + cl", amp, True, batch=batch),
    ]
    if device != "cuda":
        return base
    sized = [c for c in gpu_sized_cases(amp) if c.image_size != 64 or c.compile]  # base has 64
    return [*base, *sized]


def gpu_sized_cases(amp: str) -> list[Case]:
    """The sizes a GPU user trains at, each eager and compiled: `amp`, channels_last, batch 128."""
    return [
        Case(f"{amp} + cl, {size} px{' + compile' * compile}", amp, True, size, compile, GPU_BATCH)
        for size, compile in itertools.product(GPU_SIZES, (False, True))
    ]


class Window:
    """Times batches [warmup, warmup + n) start to start: all the loop does for them (loading, the
    step, logging, callbacks). The device is synchronised at the window's two ends only, so the
    host runs ahead of the device between them as in a real run; a mean over the window, not a
    median of batches, so work done every k batches (logging, a bar refresh) counts.

    Besides wall time, the process's CPU time (all its threads: a bar's refresh thread counts):
    on a shared VM it does not count time the process waited for a core, so it is the steadier
    figure of CPU-bound work, such as a loop's overhead with 1 torch thread."""

    def __init__(self, warmup: int, n: int) -> None:
        self.warmup, self.n = warmup, n
        self.start: tuple[float, float] | None = None  # (wall, CPU) seconds
        self.end: tuple[float, float] | None = None

    def mark(self, batch_idx: int, device: torch.device) -> None:
        """Call at the start of every batch."""
        if batch_idx == self.warmup:
            self.start = (now(device), time.process_time())
        elif batch_idx == self.warmup + self.n:
            self.end = (now(device), time.process_time())

    def _per_batch(self, clock: int) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError(f"the run ended before batch {self.warmup + self.n} began")
        return (self.end[clock] - self.start[clock]) / self.n

    @property
    def seconds_per_batch(self) -> float:
        return self._per_batch(0)

    @property
    def cpu_seconds_per_batch(self) -> float:
        return self._per_batch(1)

    def timing(self) -> dict[str, float]:
        """{"wall": s/batch, "cpu": CPU s/batch}."""
        return {"wall": self.seconds_per_batch, "cpu": self.cpu_seconds_per_batch}


class BatchTimer(Callback):
    """A `Window` as a callback; rank 0 writes its `timing()` to `out` (JSON), as a run built by
    `train(cfg)` is out of reach once it ends."""

    def __init__(
        self, warmup: int, n: int, out: str | None = None, turn: str | None = None
    ) -> None:
        # `turn`: time as that loop of the rotation `turns.current` (see bench/turns.py).
        self.window = turns.current.window(turn) if turn else Window(warmup, n)
        self.out = out

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        self.window.mark(batch_idx, pl_module.device)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.out and trainer.is_global_zero:
            Path(self.out).write_text(json.dumps(self.window.timing()))


def model_overrides(case: Case) -> list[str]:
    """The model keys a case changes: the raw loop composes the same ones."""
    return [
        f"model.generator.features={case.features}",
        f"model.discriminator.features={case.features}",
        f"model.channels_last={case.channels_last}",
        f"model.compile={case.compile}",
    ]


def case_overrides(case: Case, device: torch.device, batches: int) -> list[str]:
    """The default config at this case's size, width, batch and precision, `batches` batches."""
    return [
        "data=shapes",
        f"data._target_={TiledShapes.__module__}.TiledShapes",
        f"data.image_size={case.image_size}",
        f"data.batch_size={case.batch}",
        f"data.num_images={case.batch * batches}",
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.precision={case.precision}",
        *model_overrides(case),
        "trainer.max_epochs=1",
        f"++trainer.limit_train_batches={batches}",
    ]


# What the bench stripped from the default config until issue 17: no progress bar, CSV logs.
BENCH_LIKE = [
    "logger=csv",
    "~callbacks.progress_bar",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
]


@contextlib.contextmanager
def as_user() -> Iterator[None]:
    """What a user's terminal gives a run: W&B offline (no login here), a live Rich progress bar.

    Rich draws live only on an interactive terminal; TTY_COMPATIBLE/TTY_INTERACTIVE make it draw
    as it would there, and its output goes to /dev/null so it does not print over the table.
    """
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "TTY_COMPATIBLE": "1"}
    env["TTY_INTERACTIVE"] = "1"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    wandb.setup()  # W&B's service process starts once, here, not inside the first timed window
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def timer_overrides(warmup: int, n: int, out: Path, turn: str | None = None) -> list[str]:
    """Add a `BatchTimer` to a composed run's callbacks."""
    return [
        f"+callbacks.timer._target_={BatchTimer.__module__}.BatchTimer",
        f"+callbacks.timer.warmup={warmup}",
        f"+callbacks.timer.n={n}",
        f"+callbacks.timer.out={out}",
        *([f"+callbacks.timer.turn={turn}"] if turn else []),
    ]


def framework_timing(
    case: Case, device: torch.device, warmup: int, n: int, tmp: Path, user: bool = True
) -> dict[str, float]:
    """`train(cfg)`, the path `python -m dcgan_lightning` takes, with the user's default config
    (`user`) or stripped as the bench ran it before (`BENCH_LIKE`): its wall and CPU seconds per
    batch (`Window.timing`)."""
    cfg = framework_config(case, device, warmup, n, tmp, user)
    if user:
        with as_user():
            train(cfg)
    else:
        train(cfg)
    return json.loads(Path(cfg.callbacks.timer.out).read_text())


def framework_config(
    case: Case,
    device: torch.device,
    warmup: int,
    n: int,
    tmp: Path,
    user: bool = True,
    turn: str | None = None,
) -> DictConfig:
    """The config `framework_timing` runs, its timer writing to `tmp/seconds.json`."""
    out = tmp / "seconds.json"
    timer = timer_overrides(warmup, n, out, turn)
    overrides = [*case_overrides(case, device, warmup + n + 1), *timer]
    return compose_train_config([*overrides, *([] if user else BENCH_LIKE)], tmp / "run")


def raw_timing(
    case: Case,
    model_cfg: DictConfig,
    images: torch.Tensor,
    device: torch.device,
    warmup: int,
    n: int,
    window: Window | TurnWindow | None = None,
) -> dict[str, float]:
    """A plain PyTorch loop (the pytorch/examples recipe): its wall and CPU seconds per batch
    (`Window.timing`), timed by `window` if given."""
    G = Generator(model_cfg.z_dim, case.image_size, images.size(1), **model_cfg.generator)
    D = Discriminator(case.image_size, images.size(1), **model_cfg.discriminator)
    G.apply(dcgan_init), D.apply(dcgan_init)
    memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    if case.compile:
        G.compile(), D.compile()
    opt_g = instantiate(model_cfg.optimizer_g)(params=G.parameters())
    opt_d = instantiate(model_cfg.optimizer_d)(params=D.parameters())
    dtype = torch.float16 if case.precision == "16-mixed" else torch.bfloat16
    autocast = torch.autocast(device.type, dtype, enabled=case.precision != "32-true")
    scaler = torch.amp.GradScaler(device.type, enabled=case.precision == "16-mixed")
    # The set on the device once, as `data.on_device=auto` holds small sets: the loop's cost only.
    window = window or Window(warmup, n)
    images, logged, batch = images.to(device), [], case.batch
    order = torch.randperm(len(images), device=device)
    for i in range(warmup + n + 1):
        window.mark(i, device)
        real = images[order[i * batch : (i + 1) * batch]]
        real = real.float().div_(127.5).sub_(1.0).contiguous(memory_format=memory_format)
        with autocast:
            fake = G(torch.randn(batch, model_cfg.z_dim, device=device))
            d_real, d_fake = D(real), D(fake.detach())
            loss_d = discriminator_loss(model_cfg.loss, d_real, d_fake)
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        scaler.update()

        D.requires_grad_(False)
        with autocast:
            loss_g = generator_loss(model_cfg.loss, D(fake))
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        scaler.update()
        D.requires_grad_(True)
        d_x, d_g_z = torch.sigmoid(d_real.detach().float()), torch.sigmoid(d_fake.detach().float())
        logged.append(torch.stack([loss_d.detach(), d_x.mean(), d_g_z.mean(), loss_g.detach()]))
    return window.timing()


def peak_rss_mib(args: list[str], log: Path) -> float:
    """Peak resident memory of `python <args>`, run as its own process (output to `log`).

    Polls the child's VmHWM (Linux) once it runs `args`: `ru_maxrss` of a child would also count
    the parent's memory, which the fork copies before `exec`.
    """
    cmd, peak_kib = [sys.executable, *args], 0
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        proc_dir = Path(f"/proc/{proc.pid}")
        while proc.poll() is None:
            with contextlib.suppress(OSError, IndexError):  # it may end between poll and read
                if (proc_dir / "cmdline").read_text().split("\0")[:-1] == cmd:
                    status = (proc_dir / "status").read_text().split("VmHWM:")[1]
                    peak_kib = max(peak_kib, int(status.split()[0]))
            time.sleep(0.02)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read_text()[-2000:]}")
    return peak_kib / 1024


def _measure(
    timings: dict, case: Case, side: str, data: dict, device: torch.device, args: tuple, tmp: Path
) -> None:
    """One timing of one side, appended to `timings[(case.name, side)]` (and GPU peak memory)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if side == "raw":
        model_cfg = compose_train_config(model_overrides(case), tmp).model
        seconds = raw_timing(case, model_cfg, data[case.image_size], device, *args)["wall"]
    else:
        seconds = framework_timing(case, device, *args, tmp)["wall"]
    timings.setdefault((case.name, side), []).append(seconds)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        timings.setdefault((case.name, f"{side} GPU"), []).append(peak)


def _rows(
    timings: dict, chosen: list[Case], device: torch.device, repeats: int, n: int
) -> list[dict]:
    rows, where = [], f"{device.type}, median of {repeats} x {n} batches"
    target = "target >= 0.95 on GPU" if device.type == "cuda" else "target >= 0.97"
    for case in chosen:
        raw, fw = timings[(case.name, "raw")], timings[(case.name, "framework")]
        for side, seconds in (("raw loop", raw), ("train(cfg)", fw)):
            rate = case.batch / statistics.median(seconds)
            spread = f"{case.batch / max(seconds):.0f}-{case.batch / min(seconds):.0f}"
            note = f"{case.image_size} px, batch {case.batch}, {where}; repeats {spread}"
            rows.append(row(SECTION, f"{case.name}: {side}", rate, "img/s", note))
        # Each repeat runs both sides back to back: the median of its ratios (of seconds: img/s
        # framework / raw) is steadier than a ratio of medians on a VM whose speed drifts.
        paired = sorted(r / f for r, f in zip(raw, fw))
        ratio = statistics.median(paired)
        note = (
            f"default config (progress bar, W&B offline); {target}; median of {len(paired)} "
            f"repeats' ratios, {paired[0]:.2f}-{paired[-1]:.2f}"
        )
        rows.append(row(SECTION, f"{case.name}: train(cfg) / raw", ratio, "x", note))
        for side in ("raw", "framework") if device.type == "cuda" else ():
            peak = max(timings[(case.name, f"{side} GPU")])
            rows.append(row(SECTION, f"{case.name}: {side} peak GPU memory", peak, "MiB"))
    names = [case.name for case in chosen]
    if "fp32" in names and len(names) > 2:
        default = names[2]
        fp32_raw = statistics.median(timings[("fp32", "raw")])
        speedup = fp32_raw / statistics.median(timings[(default, "framework")])
        note = "target >= 1.8 on CPU"
        rows.append(row(SECTION, f"{default}: train(cfg) / fp32 raw loop", speedup, "x", note))
    return rows


def _rss_rows(rss: dict[str, float]) -> list[dict]:
    note = "python -m dcgan_lightning, 64 px, bf16 + cl, CPU"
    return [
        row(SECTION, "peak RSS of a training process", rss["training"], "MiB", note),
        row(SECTION, "peak RSS of importing torch", rss["import torch"], "MiB", "import torch"),
    ]


def window(device: torch.device, quick: bool) -> tuple[int, int, int]:
    """(warm-up batches, timed batches, repeats); on GPU compile and cudnn autotuning happen in
    a longer warm-up, and a window of 10 batches would be a few ms."""
    warmup, n, repeats = (2, 4, 1) if quick else (3, 10, 5)
    if device.type == "cuda":
        warmup, n = warmup + 5, n * 3
    return warmup, n, repeats


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's and this project's info logs and warnings off while measuring (they would bury
    the table), as they were afterwards."""
    loggers = [
        logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "dcgan_lightning")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def measure(chosen: list[Case], device: torch.device, quick: bool = False) -> list[dict]:
    """Raw loop against `train(cfg)` for every case, interleaved; the rows of the table."""
    warmup, n, repeats = window(device, quick)
    torch.backends.cudnn.benchmark = True  # as conf/trainer/gpu.yaml sets it for train(cfg)
    timings: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, quiet():
        sizes = {case.image_size for case in chosen}
        num_images = max(case.batch for case in chosen) * (warmup + n + 1)
        data = {s: TiledShapes(num_images=num_images, image_size=s).load_images() for s in sizes}
        for r, (i, case) in itertools.product(range(repeats), enumerate(chosen)):
            for side in ("raw", "framework")[:: 1 if r % 2 == 0 else -1]:
                run_dir = Path(tmp) / f"{r}-{i}-{side}"
                _measure(timings, case, side, data, device, (warmup, n), run_dir)
    return _rows(timings, chosen, device, repeats, n)


def memory_rows() -> list[dict]:
    """Peak RSS of a CPU training process, against importing torch alone."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*case_overrides(cases("cpu")[-1], torch.device("cpu"), 12), *BENCH_LIKE]
        run_dir = f"hydra.run.dir={Path(tmp) / 'rss'}"
        rss = {
            "training": peak_rss_mib(
                ["-m", "dcgan_lightning", *overrides, run_dir], Path(tmp) / "log"
            ),
            "import torch": peak_rss_mib(["-c", "import torch"], Path(tmp) / "log"),
        }
    return _rss_rows(rss)


def run(quick: bool = False) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return [*measure(cases(device.type), device, quick), *memory_rows()]


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['case']:<44} {r['value']:>10,.2f} {r['unit']:<6} {r['note']}")
