"""Plain DCGAN against the small-data preset (`model=dcgan_plus`) on the same few images.

    python -m dcgan_lightning.studies.small_data [--images 300] [--epochs 200] [--out DIR]

Both arms train through the real CLI on the first `--images` shapes at 32 px with the same seed,
batch and number of epochs (so the same number of steps), and are evaluated every `--eval-every`
epochs on as many samples as there are images. The script prints a Markdown table per metric at
equal steps (`val/swd`; FID and KID too where Inception weights are available) and writes
`curves.png` and `samples.png` (the last grids side by side).
Pass more overrides after `--` (e.g. `-- data=image_folder data.root=PATH` for a real small set).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image, ImageDraw

ARMS = {"dcgan": ["model=dcgan"], "dcgan_plus": ["model=dcgan_plus"]}
METRICS = ("val/swd", "val/fid", "val/kid")  # lower is better; the ones both arms logged are shown


def train_arm(name: str, overrides: list[str], out: Path) -> dict[str, dict[int, float]]:
    """Train one arm through the CLI; return {metric: {batches trained: value}}."""
    run_dir = out / name
    cmd = [sys.executable, "-m", "dcgan_lightning", *ARMS[name], *overrides]
    cmd += [f"hydra.run.dir={run_dir}", "logger=csv", "~callbacks.progress_bar"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "WANDB_MODE": "disabled"})
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # The CSV's step is the index of the last batch trained (0-based).
    return {m: {int(r["step"]) + 1: float(r[m]) for r in rows if r.get(m)} for m in METRICS}


def side_by_side(out: Path, names: list[str]) -> Path:
    grids = [Image.open(sorted((out / n / "samples").glob("epoch_*.png"))[-1]) for n in names]
    width, height = sum(g.width for g in grids) + 10 * (len(grids) - 1), grids[0].height + 20
    canvas = Image.new("RGB", (width, height), "white")
    x = 0
    for name, grid in zip(names, grids):
        canvas.paste(grid, (x, 20))
        ImageDraw.Draw(canvas).text((x + 4, 4), name, fill="black")
        x += grid.width + 10
    path = out / "samples.png"
    canvas.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("outputs/studies/small_data"))
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for both arms")
    args = parser.parse_args()

    common = [
        f"data.num_images={args.images}",
        "data.image_size=32",
        "data.batch_size=32",
        f"trainer.max_epochs={args.epochs}",
        f"metrics.eval_every_n_epochs={args.eval_every}",
        f"metrics.num_samples={args.images}",
        "seed=0",
        *args.overrides,
    ]
    results = {name: train_arm(name, common, args.out) for name in ARMS}
    shown = [m for m in METRICS if all(r[m] for r in results.values())]
    for metric in shown:
        print(table(metric, {name: r[metric] for name, r in results.items()}))
    print(f"{plot_curves(args.out, shown, results)}\n{side_by_side(args.out, list(ARMS))}")


def table(metric: str, curves: dict[str, dict[int, float]]) -> str:
    """A Markdown table of `metric` at the batch counts every arm was evaluated at."""
    steps = sorted(set.intersection(*(set(c) for c in curves.values())))
    lines = [f"\n{metric} (lower is better) at equal steps:\n", "| batches | " + " | ".join(curves)]
    lines[-1] += " |"
    lines.append("|---|" + "---|" * len(curves))
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(f"{c[step]:.4g}" for c in curves.values()) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(out: Path, metrics: list[str], results: dict[str, dict]) -> Path:
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, result in results.items():
            ax.plot(list(result[metric]), list(result[metric].values()), marker="o", label=name)
        ax.set(xlabel="batches", ylabel=metric, title=f"{metric}, {out.name}")
        ax.legend()
    path = out / "curves.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


if __name__ == "__main__":
    main()
