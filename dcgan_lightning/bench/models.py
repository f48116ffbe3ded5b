"""What each model option costs per batch against `model=dcgan`, through `train(cfg)`.

At the small-data scale (32 px, batch 32, the embedded shapes, the device's default precision and
memory format): the preset for small sets, the preset with adaptive augmentation, the plain DCGAN
with DiffAugment under ADA (the small-data study's `dcgan_ada`), the same with an EMA generator
whose horizon ramps up (`dcgan_ada_ema_rampup`), and the conditional model with
each way G takes the class. Runs alternate in a rotating order, each timed over a window after a
warm-up; a figure is a median over rounds, its ratio the median of each round's ratio to that
round's `model=dcgan` (the machine's speed drifts between rounds).
Run alone: `python -m dcgan_lightning.bench.models [--quick]`.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from dcgan_lightning.bench import row
from dcgan_lightning.bench.training import BENCH_LIKE, quiet, timer_overrides
from dcgan_lightning.compose import compose_train_config
from dcgan_lightning.train import train

SECTION = "models"
IMAGE_SIZE, BATCH = 32, 32
ADA = "model.ada={target:0.6,interval:4,kimg:50}"
DIFFAUGMENT = "model.diffaugment=[color,translation,cutout]"
EMA_RAMPUP = "model.ema={decay:0.99,start_step:0,rampup:0.05}"
LABELLED = ["model=cdcgan", "data.labels=true"]
MODELS = {
    "model=dcgan": ["model=dcgan"],
    "model=dcgan_plus": ["model=dcgan_plus"],
    f"model=dcgan_plus {ADA}": ["model=dcgan_plus", ADA],
    # The small-data study's `dcgan_ada` arm: the plain DCGAN with DiffAugment under ADA.
    f"model=dcgan + DiffAugment under {ADA}": ["model=dcgan", DIFFAUGMENT, ADA],
    # ...with an EMA generator whose horizon ramps up (the study's `dcgan_ada_ema_rampup`).
    f"model=dcgan + DiffAugment under ADA + {EMA_RAMPUP}": [
        "model=dcgan",
        DIFFAUGMENT,
        ADA,
        EMA_RAMPUP,
    ],
    "model=cdcgan (conditional BatchNorm)": [*LABELLED, "model.conditional.generator=cbn"],
    "model=cdcgan (embedding concatenated to z)": [
        *LABELLED,
        "model.conditional.generator=concat",
    ],
}


def window(device: torch.device, quick: bool) -> tuple[int, int, int]:
    """(warm-up, timed batches, rounds)."""
    if device.type == "cuda":
        return (10, 50, 1) if quick else (20, 200, 3)
    return (3, 10, 1) if quick else (5, 40, 5)


def overrides(model: list[str], device: torch.device, batches: int) -> list[str]:
    return [
        "data=shapes",
        f"data.image_size={IMAGE_SIZE}",
        f"data.batch_size={BATCH}",
        f"data.num_images={BATCH * batches}",
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        "trainer.max_epochs=1",
        f"++trainer.limit_train_batches={batches}",
        "metrics=none",
        *BENCH_LIKE,
        *model,
    ]


def measure(device: torch.device, quick: bool = False) -> dict[str, list[float]]:
    """Seconds per batch of every model of `MODELS`, one run each per round."""
    warmup, n, rounds = window(device, quick)
    names = list(MODELS)
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp_dir, quiet():
        tmp = Path(tmp_dir)
        for r in range(rounds):
            for i in range(len(names)):
                name = names[(i + r) % len(names)]
                run_dir, out = tmp / f"{r}-{i}", tmp / f"{r}-{i}.json"
                cfg_overrides = [
                    *overrides(MODELS[name], device, warmup + n + 1),
                    *timer_overrides(warmup, n, out),
                ]
                train(compose_train_config(cfg_overrides, run_dir))
                times[name].append(json.loads(out.read_text())["wall"])
    return times


def rows(device: torch.device, times: dict[str, list[float]]) -> list[dict]:
    base = times["model=dcgan"]
    what = f"{IMAGE_SIZE} px, batch {BATCH}, {device.type} default precision, median of {len(base)}"
    out = []
    for name, seconds in times.items():
        ratio = statistics.median(s / b for s, b in zip(seconds, base))
        note = f"{ratio:.2f}x model=dcgan; {what}"
        out.append(row(SECTION, name, 1e3 * statistics.median(seconds), "ms/batch", note))
    return out


def run(quick: bool = False) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return rows(device, measure(device, quick))


if __name__ == "__main__":
    from dcgan_lightning.bench.__main__ import table

    print(table(run(quick="--quick" in sys.argv)))
