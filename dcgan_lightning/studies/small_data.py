"""Plain DCGAN against the small-data preset (`model=dcgan_plus`) on the same few images.

    python -m dcgan_lightning.studies.small_data [--data shapes|digits] [--images 300]
        [--epochs 200] [--arms dcgan dcgan_plus ...] [--seeds 0 1 2] [--out DIR] [-- overrides]

Every arm trains through the real CLI on the same `--images` images at 32 px, with the same
seeds, batch and number of epochs (so the same number of steps), and is evaluated every
`--eval-every` epochs on as many samples as there are images. Runs go side by side (`--jobs`, the
CPU's threads split between them), each into `DIR/<arm>_seed<seed>/`. The script prints a
Markdown table per metric at equal steps (`val/swd`; FID and KID too where Inception weights are
available; mean ± standard deviation over seeds), one of how far each discriminator memorised
its training set (r_v, against as many held-out images), and writes `curves.png` and `samples.png`
(the last grids of the first seed side by side).

`--data digits` trains on `--images` of scikit-learn's 1,797 handwritten digits and holds out as
many others, both drawn from the whole set: a real small set that needs no download
(`pip install scikit-learn`). Pass more overrides after `--` (e.g.
`-- data=image_folder data.root=PATH` for a folder of your own: no r_v then, as nothing of it is
held out).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from dcgan_lightning.models.gan_module import GAN
from dcgan_lightning.studies.overfitting import discriminator_overfitting

DCGAN_ADA = [
    "model=dcgan",
    "model.diffaugment=[color,translation,cutout]",
    "model.ada={target:0.6,interval:4,kimg:50}",
]
# The two arms of the study, then leave-one-out ablations of the preset.
ARMS = {
    "dcgan": ["model=dcgan"],
    "dcgan_plus": ["model=dcgan_plus"],
    "plus_no_ema": ["model=dcgan_plus", "model.ema=null"],
    "plus_no_diffaugment": ["model=dcgan_plus", "model.diffaugment=[]"],
    "plus_bce_batchnorm": [
        "model=dcgan_plus",
        "model.loss=bce",
        "model.discriminator.spectral_norm=false",
    ],
    # The preset with adaptive augmentation: DiffAugment only as far as D overfits (ADA).
    "plus_ada": ["model=dcgan_plus", "model.ada={target:0.6,interval:4,kimg:50}"],
    # The plain DCGAN with DiffAugment under ADA only: until D overfits, the plain DCGAN itself.
    "dcgan_ada": DCGAN_ADA,
    # The same with the preset's EMA generator for samples and metrics.
    "dcgan_ada_ema": [*DCGAN_ADA, "model.ema={decay:0.99,start_step:0}"],
    # ...with the EMA's horizon at most 5% of the run so far (StyleGAN2-ADA's ema_rampup).
    "dcgan_ada_ema_rampup": [*DCGAN_ADA, "model.ema={decay:0.99,start_step:0,rampup:0.05}"],
}
METRICS = ("val/swd", "val/fid", "val/kid", "val/nn_ratio")  # those every arm logged are shown
LOWER_IS_BETTER = {"val/swd", "val/fid", "val/kid"}
NN_RATIO = "below 1: samples sit nearer training images than those sit to each other"


def digits(out: Path, n: int) -> tuple[list[str], dict]:
    """n of scikit-learn's digits in out/train, n others in out/heldout (8x8 PNGs, resized to
    32 px by the datamodule): the overrides that train on them, and the data keys that load the
    held-out ones instead. The set runs writer by writer, so both are drawn from all of it (the
    same draw every run): held-out digits of unseen writers would make r_v read memorisation
    where there is none."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("--data digits needs scikit-learn: pip install scikit-learn")
    images = load_digits().images  # (1797, 8, 8), ink 0..16
    if 2 * n > len(images):
        sys.exit(f"--data digits has {len(images)} images: --images must be <= {len(images) // 2}")
    images = images[np.random.default_rng(0).permutation(len(images))]
    for split, chunk in (("train", images[:n]), ("heldout", images[n : 2 * n])):
        shutil.rmtree(out / split, ignore_errors=True)  # no PNGs left from a larger --images
        (out / split).mkdir(parents=True)
        for i, image in enumerate(chunk):
            pixels = np.round(image * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, "L").save(out / split / f"{i:04d}.png")
    data = ["data=image_folder", "data.channels=1", "data.cache_dir=null"]
    return [*data, f"data.root={out / 'train'}"], {"root": str(out / "heldout")}


def train_run(arm: str, seed: int, overrides: list[str], out: Path, threads: int) -> dict:
    """Train one arm with one seed through the CLI; return {metric: {batches trained: value}}."""
    run_dir = out / run_name(arm, seed)
    cmd = [sys.executable, "-m", "dcgan_lightning", *ARMS[arm], *overrides, f"seed={seed}"]
    cmd += [f"hydra.run.dir={run_dir}", "logger=csv", "~callbacks.progress_bar"]
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads)}
    with open(out / f"{run_name(arm, seed)}.log", "w") as log:
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # The CSV's step is the index of the last batch trained (0-based).
    return {m: {int(r["step"]) + 1: float(r[m]) for r in rows if r.get(m)} for m in METRICS}


def run_name(arm: str, seed: int) -> str:
    return f"{arm}_seed{seed}"


def overfitting(run_dir: Path, heldout: dict) -> dict[str, float]:
    """r_v of the run's last checkpoint; `heldout`: the data keys that load unseen images."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    splits = []
    for data_cfg in (cfg.data, OmegaConf.merge(cfg.data, heldout)):
        dm = instantiate(data_cfg)
        dm.setup("fit")
        splits.append(dm.on_after_batch_transfer(dm.images, 0))  # uint8 -> [-1, 1], no flips
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    model = GAN.load_from_checkpoint(ckpt, map_location="cpu", optimizer_g=None, optimizer_d=None)
    return discriminator_overfitting(model, *splits, batch_size=cfg.data.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("shapes", "digits"), default="shapes")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["dcgan", "dcgan_plus"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: all)")
    parser.add_argument("--out", type=Path, default=Path("outputs/studies/small_data"))
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every arm")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    if args.data == "digits":
        data, heldout = digits(args.out / "digits", args.images)
    else:  # the same generator, another seed: shapes never seen in training
        data, heldout = [f"data.num_images={args.images}"], {"seed": 1}
    if any(o.startswith(("data=", "data.root=")) for o in args.overrides):
        heldout = None  # a folder of the user's: nothing held out
    common = [
        *data,
        "data.image_size=32",
        "data.batch_size=32",
        f"trainer.max_epochs={args.epochs}",
        f"metrics.eval_every_n_epochs={args.eval_every}",
        f"metrics.num_samples={args.images}",
        *args.overrides,
    ]
    runs = [(arm, seed) for arm in args.arms for seed in args.seeds]
    jobs = args.jobs or min(len(runs), os.cpu_count() or 1)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ThreadPoolExecutor(jobs) as pool:
        futures = {run: pool.submit(train_run, *run, common, args.out, threads) for run in runs}
        curves = {run: future.result() for run, future in futures.items()}

    def per_arm(by_run: dict) -> dict[str, list]:
        return {arm: [by_run[arm, seed] for seed in args.seeds] for arm in args.arms}

    shown = [m for m in METRICS if all(c[m] for c in curves.values())]
    for metric in shown:
        print(table(metric, per_arm({run: c[metric] for run, c in curves.items()})))
    if heldout is not None:
        r_v = {run: overfitting(args.out / run_name(*run), heldout) for run in runs}
        print(overfitting_table(per_arm(r_v)))
    first = [run_name(arm, args.seeds[0]) for arm in args.arms]
    print(f"{plot_curves(args.out, shown, curves)}\n{side_by_side(args.out, first)}")


def cell(values: list[float], significant: int) -> str:
    """One value, or the mean ± standard deviation over seeds."""
    if len(values) == 1:
        return f"{values[0]:.{significant}g}"
    return f"{np.mean(values):.{significant}g} ± {np.std(values, ddof=1):.2g}"


def table(metric: str, curves: dict[str, list[dict[int, float]]]) -> str:
    """A Markdown table of `metric` at the batch counts every run was evaluated at."""
    steps = sorted(set.intersection(*(set(c) for runs in curves.values() for c in runs)))
    reading = "lower is better" if metric in LOWER_IS_BETTER else NN_RATIO
    lines = [
        f"\n{metric} ({reading}) at equal steps:\n",
        "| batches | " + " | ".join(curves) + " |",
        "|---|" + "---|" * len(curves),
    ]
    for step in steps:
        row = [cell([c[step] for c in runs], 4) for runs in curves.values()]
        lines.append(f"| {step} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def overfitting_table(rows: dict[str, list[dict[str, float]]]) -> str:
    """A Markdown table of r_v and the mean D logits behind it, an arm a row."""
    keys = ("r_v", "d_train", "d_heldout", "d_generated")
    lines = [
        "\nDiscriminator memorisation at the end (r_v: 0 none, 1 held-out images look fake):\n",
        "| arm | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for arm, runs in rows.items():
        lines.append(f"| {arm} | " + " | ".join(cell([r[k] for r in runs], 3) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(out: Path, metrics: list[str], curves: dict[tuple[str, int], dict]) -> Path:
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    arms = list(dict.fromkeys(arm for arm, _ in curves))  # a colour an arm, a line a seed
    for ax, metric in zip(axes[0], metrics):
        labelled = set()
        for (arm, _), curve in curves.items():
            label = "_nolegend_" if arm in labelled else arm
            labelled.add(arm)
            steps, values = list(curve[metric]), list(curve[metric].values())
            ax.plot(steps, values, marker="o", color=f"C{arms.index(arm)}", label=label)
        ax.set(xlabel="batches", ylabel=metric, title=f"{metric}, {out.name}")
        ax.legend()
    path = out / "curves.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


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


if __name__ == "__main__":
    main()
