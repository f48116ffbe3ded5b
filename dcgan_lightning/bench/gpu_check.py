"""`python -m dcgan_lightning.bench.gpu_check` (`make gpu-check`): what only a GPU shows, one table.

1. `pytest -m gpu`: the tests that skip without CUDA (random states, no host sync per step, ...);
2. a few hundred batches of `trainer=gpu` at 32-true, bf16-mixed and 16-mixed, with `model=dcgan`
   and `model=dcgan_plus`: losses finite, every G and D parameter changed, a sample grid written;
3. the bench's `training` and `overhead` sections at 64, 128 and 256 px, eager and compiled.

Without a CUDA device it says so and exits 0, so it is safe in any CI. Exit status 1 when a check
failed. `--stages` runs only some stages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from dcgan_lightning.bench import overhead, training
from dcgan_lightning.bench.training import Case, TiledShapes
from dcgan_lightning.compose import compose_train_config
from dcgan_lightning.precision import amp_precision
from dcgan_lightning.train import train

REPO = Path(__file__).resolve().parents[2]
NO_GPU = "gpu-check: no CUDA device here, nothing to check (run it on a machine with a GPU)."
STAGES = ("pytest", "train", "bench")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
MODELS = ("dcgan", "dcgan_plus")
EPOCHS, BATCHES_PER_EPOCH = 4, 50  # 200 batches; a grid per epoch
# A training check's run: quiet (no bar, CSV logs), no metrics (pytest covers them).
CHECK_OVERRIDES = [
    "logger=csv",
    "metrics=none",
    "~callbacks.progress_bar",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
]


@dataclass(frozen=True)
class Result:
    """One line of the final table: `result` is "ok", "FAILED" or a measured value."""

    stage: str
    case: str
    result: str
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.result == "FAILED"


def table(results: list[Result]) -> str:
    """The results as one markdown table, failures first so they cannot be missed."""
    lines = ["| stage | case | result | note |", "|---|---|---:|---|"]
    for r in sorted(results, key=lambda r: not r.failed):
        lines.append(f"| {r.stage} | {r.case} | {r.result} | {r.note} |")
    return "\n".join(lines)


class ParameterChange(Callback):
    """Writes to `out` (JSON) which G and D parameters a fit left unchanged or non-finite."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.initial: dict[str, torch.Tensor] = {}

    @staticmethod
    def _params(pl_module: pl.LightningModule) -> Iterator[tuple[str, torch.Tensor]]:
        for net in ("generator", "discriminator"):
            for name, p in getattr(pl_module, net).named_parameters():
                yield f"{net}.{name}", p.detach()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = {name: p.clone() for name, p in self._params(pl_module)}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        final = dict(self._params(pl_module))
        report = {
            "count": len(final),
            "unchanged": [n for n, p in final.items() if torch.equal(p, self.initial[n])],
            "nonfinite": [n for n, p in final.items() if not bool(p.isfinite().all())],
        }
        Path(self.out).write_text(json.dumps(report))


def check_training(overrides: list[str], output_dir: Path) -> list[str]:
    """Train `overrides` (on top of the default config, quietly) and return what went wrong:
    empty when losses are finite, every G and D parameter changed and a sample grid exists."""
    report = output_dir / "parameters.json"
    cfg = compose_train_config(
        [
            *CHECK_OVERRIDES,
            *overrides,
            f"+callbacks.parameter_change._target_={ParameterChange.__module__}.ParameterChange",
            f"+callbacks.parameter_change.out={report}",
        ],
        output_dir,
    )
    metrics = train(cfg)
    problems = []
    losses = {k: v for k, v in metrics.items() if k.startswith("train/loss")}
    if not losses:
        problems.append(f"no losses logged (metrics: {sorted(metrics)})")
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        problems.append(f"non-finite losses {bad}")
    params = json.loads(report.read_text())
    for what in ("unchanged", "nonfinite"):
        if params[what]:
            names = ", ".join(params[what][:3])
            problems.append(f"{len(params[what])}/{params['count']} parameters {what}: {names}")
    if not sorted((output_dir / "samples").glob("epoch_*.png")):
        problems.append(f"no sample grid in {output_dir / 'samples'}")
    return problems


def training_checks(tmp: Path) -> list[Result]:
    """Every model at every precision, `EPOCHS` x `BATCHES_PER_EPOCH` batches of 64 px on GPU."""
    results = []
    for model in MODELS:
        for precision in PRECISIONS:
            case, start = f"model={model}, {precision}", time.perf_counter()
            overrides = [
                f"model={model}",
                "trainer=gpu",
                f"trainer.precision={precision}",
                f"trainer.max_epochs={EPOCHS}",
                f"data._target_={TiledShapes.__module__}.TiledShapes",  # drawn once, not 6 times
                "data.image_size=64",
                f"data.num_images={64 * BATCHES_PER_EPOCH}",
            ]
            try:
                problems = check_training(overrides, tmp / f"{model}-{precision}")
            except Exception as err:  # one broken combination must not hide the others
                problems = [f"{type(err).__name__}: {err}"]
            note = "; ".join(problems) or (
                f"{EPOCHS * BATCHES_PER_EPOCH} batches: losses finite, parameters changed, "
                f"grid written ({time.perf_counter() - start:.0f} s)"
            )
            results.append(Result("train", case, "FAILED" if problems else "ok", note))
    return results


def run_pytest() -> list[Result]:
    """`pytest -m gpu`, its output passed through; the result is its summary line."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n", flush=True)
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    return [Result("pytest", "pytest -m gpu", "ok" if proc.returncode == 0 else "FAILED", summary)]


def bench_cases() -> list[Case]:
    """Every GPU size, eager and compiled, at the GPU's default precision."""
    return training.gpu_sized_cases(amp_precision("gpu"))


def _value(r: dict) -> str:
    digits = 2 if abs(r["value"]) < 100 else 0
    return f"{r['value']:,.{digits}f} {r['unit']}"


def bench(device: torch.device, chosen: list[Case]) -> list[Result]:
    """The `training` and `overhead` sections at every case of `chosen`, quick windows."""
    rows = training.measure(chosen, device, quick=True)
    for case in chosen:
        rows += overhead.rows(case, device, overhead.measure(case, device, quick=True))
    return [Result(r["section"], r["case"], _value(r), r["note"]) for r in rows]


@contextlib.contextmanager
def timed(results: list[Result], stage: str) -> Iterator[None]:
    """A stage's wall time as a row: the whole check should stay under 5 minutes."""
    start = time.perf_counter()
    try:
        yield
    except Exception as err:
        results.append(Result(stage, "the stage itself", "FAILED", f"{type(err).__name__}: {err}"))
    seconds = time.perf_counter() - start
    results.append(Result(stage, "wall time", f"{seconds:.0f} s"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcgan_lightning.bench.gpu_check")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp, training.quiet():
        for stage in args.stages:
            print(f"[gpu-check] {stage} ...", file=sys.stderr, flush=True)
            with timed(results, stage):
                if stage == "pytest":
                    results += run_pytest()
                elif stage == "train":
                    results += training_checks(Path(tmp))
                else:
                    results += bench(torch.device("cuda"), bench_cases())
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print(table(results))
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
