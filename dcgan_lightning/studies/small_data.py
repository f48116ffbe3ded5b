"""Plain DCGAN against the small-data preset (`model=dcgan_plus`) on the same few images.

    python -m dcgan_lightning.studies.small_data [--images 300] [--epochs 200] [--out DIR]

Both arms train through the real CLI on the first `--images` shapes at 32 px with the same seed,
batch and number of epochs (so the same number of steps), and log `val/swd` every
`--eval-every` epochs on the same number of samples. The script prints a Markdown table of SWD at
equal steps and writes `swd.png` (the curves) and `samples.png` (the last grids side by side).
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


def train_arm(name: str, overrides: list[str], out: Path) -> dict[int, float]:
    """Train one arm through the CLI; return {logged step (batches): val/swd}."""
    run_dir = out / name
    cmd = [sys.executable, "-m", "dcgan_lightning", *ARMS[name], *overrides]
    cmd += [f"hydra.run.dir={run_dir}", "logger=csv", "~callbacks.progress_bar"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "WANDB_MODE": "disabled"})
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/swd")]
    return {int(r["step"]): float(r["val/swd"]) for r in rows}


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
        "model.ema.start_step=500",
        "seed=0",
        *args.overrides,
    ]
    curves = {}
    for name in ARMS:
        arm = [o for o in common if not (name == "dcgan" and o.startswith("model.ema"))]
        curves[name] = train_arm(name, arm, args.out)

    steps = sorted(set.intersection(*(set(c) for c in curves.values())))
    print(f"\nval/swd (x1e3, lower is better), {args.images} images, same steps:\n")
    print("| batches | " + " | ".join(curves) + " |")
    print("|---|" + "---|" * len(curves))
    for step in steps:
        print(f"| {step} | " + " | ".join(f"{c[step]:.1f}" for c in curves.values()) + " |")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=name)
    ax.set(xlabel="batches", ylabel="val/swd (x1e3)", title=f"{args.images} images")
    ax.legend()
    fig.savefig(args.out / "swd.png", dpi=120, bbox_inches="tight")
    print(f"\n{args.out / 'swd.png'}\n{side_by_side(args.out, list(curves))}")


if __name__ == "__main__":
    main()
