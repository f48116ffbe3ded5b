"""Small-data recipes on real paintings, and parity with the canonical pytorch/examples recipe.

    python -m dcgan_lightning.studies.real_paintings train [--sets sisley pissarro]
        [--arms raw canonical fp32 picasso dcgan_plus diffaug_ema monet ada ttur]
        [--seeds 0 1 2] [--jobs 2] [--image-size 32] [--features 32] [--batches 400] [--evals 2]
        [--out DIR]
    python -m dcgan_lightning.studies.real_paintings score [--out DIR]
    python -m dcgan_lightning.studies.real_paintings time [--arms ...] [--out DIR]

`train` runs every (set, arm, seed) at the same number of batches of 32, one torch thread per run,
`--jobs` worker processes at once (each runs its share in turn, imports paid once): the
framework arms through `train(cfg)` with the CLI's overrides (evaluated `--evals` times: val/swd,
val/nn_ratio, val/r_v on a 10% holdout, a checkpoint at each evaluation), the `raw` arm as the
canonical recipe's plain loop (`canonical_loop`: fp32, torchvision bilinear resize, no flips,
every image, BCE, Adam 2e-4 (0.5, 0.999); the project's G and D, so only the loop differs).

`score` scores every saved generator the same way (`score_generator`: one SWD against the same
real images, the set's every image decoded by the framework) in three BatchNorm modes: `eval`
(running statistics, what `GAN.generate` used), `train` (each batch's own statistics, as
pytorch/examples draws its samples) and `standing` (statistics re-estimated for the current
weights), and prints the tables of the study page (docs/studies/2026-12-03-real-paintings.md).
`time` times every arm's batches apart from the study, the arms in turn (`time_arms`).
Data: `$DCGAN_PAINTINGS/{sisley,pissarro}` (`ROOT`), Sisley and the first 300 Pissarro files.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

# The folder holding sisley/ and pissarro/ (256 px JPEGs): DCGAN_PAINTINGS, else where they were.
ROOT = os.environ.get("DCGAN_PAINTINGS", "/work/shared/data/paintings")
SETS = {  # name: (folder, max_images)
    "sisley": ("sisley", None),
    "pissarro": ("pissarro", 300),
}
BATCH = 32
HOLDOUT = 0.1
# Arms through the CLI: the overrides on top of the common ones.
ARMS: dict[str, list[str]] = {
    # pytorch/examples' recipe through train(cfg), at the CPU default precision (bf16-mixed).
    "canonical": ["model=dcgan"],
    # The same in fp32: is the precision default a cost?
    "fp32": ["model=dcgan", "trainer.precision=32-true"],
    # +experiment=picasso's recipe: nearest-upsample G, D dropout 0.3, Adam 3e-3, z 128, flips.
    "picasso": [
        "model=upsample",
        "model.z_dim=128",
        "model.discriminator.dropout=0.3",
        "model.optimizer_g.lr=3e-3",
        "model.optimizer_d.lr=3e-3",
        "data.flip=true",
    ],
    "dcgan_plus": ["model=dcgan_plus"],
    # DiffAugment with the plain BCE D, an EMA generator whose horizon ramps up (StyleGAN2-ADA).
    "diffaug_ema": [
        "model=dcgan",
        "model.diffaugment=[color,translation,cutout]",
        "model.ema={decay:0.999,start_step:0,rampup:0.05}",
    ],
    # +experiment=monet's recipe: model=dcgan with flips.
    "monet": ["model=dcgan", "data.flip=true"],
    # DiffAugment under ADA: each op's probability p follows r_t (target 0.6, every 4 batches).
    # kimg 5: p can go 0 -> 1 in 5k images (156 batches of 32), so it moves within a 400-batch run.
    "ada": [
        "model=dcgan",
        "model.diffaugment=[color,translation,cutout]",
        "model.ada={target:0.6,interval:4,kimg:5}",
    ],
    # Two time-scale update rule: D at half G's learning rate.
    "ttur": ["model=dcgan", "model.optimizer_d.lr=1e-4"],
}
RAW = "raw"  # the canonical recipe as a plain loop
MODULE = "dcgan_lightning.studies.real_paintings"


class StepTimer(pl.Callback):
    """Seconds per training batch (batch start to batch end: the step alone, no evaluation), the
    median over the run, written to `out` as JSON at the end."""

    def __init__(self, out: str) -> None:
        self.out, self.times, self.start = out, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self.start)

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).write_text(json.dumps({"s_per_batch": statistics.median(self.times)}))


def schedule(name: str, batches: int, evals: int) -> tuple[int, int, int]:
    """(epochs, evaluate every n epochs, batches per epoch) giving ~`batches` batches."""
    total = len(list_files(name))
    trained = total - max(1, round(HOLDOUT * total))
    per_epoch = trained // BATCH  # drop_last
    every = max(1, round(batches / evals / per_epoch))
    return every * evals, every, per_epoch


def list_files(name: str) -> list[Path]:
    from dcgan_lightning.data.decode import list_images

    folder, max_images = SETS[name]
    return list_images(Path(ROOT) / folder)[:max_images]


def arm_overrides(arm: str, folder: str, epochs: int, args: argparse.Namespace) -> list[str]:
    """What every framework run of `arm` on `folder` shares: the arm, the data, the nets, epochs."""
    return [
        *ARMS[arm],
        "data=image_folder",
        f"data.root={ROOT}",
        f"data.folder={folder}",
        "data.cache_dir=null",
        f"data.image_size={args.image_size}",
        f"data.batch_size={BATCH}",
        f"data.holdout={HOLDOUT}",
        f"model.generator.features={args.features}",
        f"model.discriminator.features={args.features}",
        f"trainer.max_epochs={epochs}",
    ]


def run_overrides(name: str, arm: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The CLI overrides of one framework run (`python -m dcgan_lightning ...` takes the same)."""
    folder, max_images = SETS[name]
    epochs, every, _ = schedule(name, args.batches, args.evals)
    trained = len(list_files(name)) - max(1, round(HOLDOUT * len(list_files(name))))
    run_dir = args.out / name / f"{arm}_seed{seed}"
    return [
        *arm_overrides(arm, folder, epochs, args),
        f"seed={seed}",
        f"data.max_images={max_images or 'null'}",
        f"metrics.eval_every_n_epochs={every}",
        f"metrics.num_samples={trained}",
        "metrics.fid=false",
        "metrics.kid=false",
        "metrics.prdc=false",
        "metrics.download=false",
        "metrics.cache_dir=null",
        f"callbacks.model_checkpoint.every_n_epochs={every}",
        "callbacks.model_checkpoint.keep=-1",
        "callbacks.model_checkpoint.last_every_n_minutes=null",
        f"+callbacks.step_timer._target_={MODULE}.StepTimer",
        f"+callbacks.step_timer.out={run_dir / 'time.json'}",
        "logger=csv",
        "~callbacks.progress_bar",
        "~callbacks.training_plots",  # matplotlib at every epoch end: a study reads the CSV
    ]


def one_run(job: tuple[str, str, int, argparse.Namespace]) -> str:
    """One (set, arm, seed) in this worker process (imports paid once per worker)."""
    name, arm, seed, args = job
    run_dir = args.out / name / f"{arm}_seed{seed}"
    if (run_dir / "time.json").exists():
        return f"{run_dir}: done before"
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    try:
        if arm == RAW:
            _, every, per_epoch = schedule(name, args.batches, args.evals)
            images = bilinear_images(name, args.image_size)
            batches = every * per_epoch * args.evals
            canonical_loop(images, seed, batches, every * per_epoch, args.features, run_dir)
        else:
            from dcgan_lightning.compose import compose_train_config
            from dcgan_lightning.train import train

            train(compose_train_config(run_overrides(name, arm, seed, args), run_dir))
    except Exception as err:
        return f"{run_dir}: FAILED {err!r}"
    return f"{run_dir}: {time.time() - start:.0f} s"


def time_arms(args: argparse.Namespace, rounds: int = 2, epochs: int = 2) -> dict[str, list[float]]:
    """Seconds per batch of every arm under the same conditions: `rounds` rounds, the arms in
    turn in each (drift on a shared machine hits all alike), `epochs` of Sisley each, no
    evaluation; the median batch of each run."""
    from dcgan_lightning.compose import compose_train_config
    from dcgan_lightning.train import train

    worker_init()
    out = args.out / "timing"
    folder, _ = SETS["sisley"]
    _, _, per_epoch = schedule("sisley", args.batches, args.evals)
    times: dict[str, list[float]] = {arm: [] for arm in args.arms}
    for r in range(rounds):
        for arm in args.arms:
            run_dir = out / f"{arm}_round{r}"
            run_dir.mkdir(parents=True, exist_ok=True)
            if arm == RAW:
                images = bilinear_images("sisley", args.image_size)
                canonical_loop(images, r, epochs * per_epoch, 10**9, args.features, run_dir)
            else:
                overrides = [
                    *arm_overrides(arm, folder, epochs, args),
                    "metrics=none",
                    "~callbacks.overfitting",
                    f"+callbacks.step_timer._target_={MODULE}.StepTimer",
                    f"+callbacks.step_timer.out={run_dir / 'time.json'}",
                    "logger=csv",
                    "~callbacks.progress_bar",
                    "~callbacks.training_plots",
                ]
                train(compose_train_config(overrides, run_dir))
            times[arm].append(json.loads((run_dir / "time.json").read_text())["s_per_batch"])
            print(arm, times[arm], flush=True)
    (out / "times.json").write_text(json.dumps(times))
    return times


def worker_init() -> None:
    os.nice(10)
    os.environ["WANDB_MODE"] = "disabled"
    torch.set_num_threads(1)


def bilinear_images(name: str, size: int) -> torch.Tensor:
    """Every image of the set as torchvision's dcgan example loads it: Resize (bilinear,
    antialiased), CenterCrop, ToTensor, Normalize(0.5, 0.5): floats in [-1, 1]."""
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize((0.5,) * 3, (0.5,) * 3),
        ]
    )
    out = []
    for path in list_files(name):
        with Image.open(path) as image:
            out.append(tf(image.convert("RGB")))
    return torch.stack(out)


def canonical_loop(
    images: torch.Tensor, seed: int, batches: int, every: int, features: int, out: Path
) -> None:
    """pytorch/examples' dcgan main.py loop: every image, shuffled each epoch, the last short
    batch kept; D on real then on detached fake, one step; G step; fp32. G's weights are saved
    every `every` batches (G_<batches>.pt) for `score`."""
    from dcgan_lightning.models.discriminator import Discriminator
    from dcgan_lightning.models.generator import Generator
    from dcgan_lightning.models.init import dcgan_init

    torch.manual_seed(seed)
    size = images.size(-1)
    G, D = Generator(100, size, 3, features=features), Discriminator(size, 3, features=features)
    G.apply(dcgan_init)
    D.apply(dcgan_init)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    loader = torch.utils.data.DataLoader(images, batch_size=BATCH, shuffle=True)
    done, times = 0, []
    while done < batches:
        for real in loader:
            start = time.perf_counter()
            n = real.size(0)
            D.zero_grad()
            loss_real = bce(D(real).view(-1), torch.ones(n))
            fake = G(torch.randn(n, 100))
            loss_fake = bce(D(fake.detach()).view(-1), torch.zeros(n))
            (loss_real + loss_fake).backward()
            opt_d.step()
            G.zero_grad()
            bce(D(fake).view(-1), torch.ones(n)).backward()
            opt_g.step()
            times.append(time.perf_counter() - start)
            done += 1
            if done % every == 0:
                torch.save(G.state_dict(), out / f"G_{done:06d}.pt")
            if done == batches:
                break
    (out / "time.json").write_text(json.dumps({"s_per_batch": statistics.median(times)}))


# -- scoring ---------------------------------------------------------------------------------


@torch.no_grad()
def standing_statistics(G: nn.Module, z_dim: int, batches: int = 16, n: int = 64) -> None:
    """Re-estimate every BatchNorm's running statistics for G's current weights: the cumulative
    average of the batch statistics over `batches` batches of fresh z (BigGAN's standing stats)."""
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    gen = torch.Generator().manual_seed(12345)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    for _ in range(batches):
        G(torch.randn(n, z_dim, generator=gen))
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)


@torch.no_grad()
def samples(G: nn.Module, z_dim: int, n: int, mode: str, batch: int = 64) -> torch.Tensor:
    """n images in [-1, 1] from fixed z, G in BatchNorm `mode` (eval | train | standing)."""
    import copy

    G = copy.deepcopy(G)
    if mode == "standing":
        standing_statistics(G, z_dim)
    G.train(mode == "train")
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(0))
    return torch.cat([G(chunk).float() for chunk in z.split(batch)])


SCORE_PATCHES, SCORE_DIRECTIONS = 8192, 128  # a quarter of val/swd's patches and directions


def score_generator(fakes: torch.Tensor, reals_u8: torch.Tensor) -> float:
    """SWD as val/swd computes it (fewer patches and directions: ~16x cheaper on a shared CPU),
    for fakes in [-1, 1] against uint8 reals."""
    from dcgan_lightning.metrics.evaluator import to_uint8
    from dcgan_lightning.metrics.swd import SlicedWassersteinDistance

    n = len(reals_u8)
    per_image = min(128, -(-SCORE_PATCHES // n))
    swd = SlicedWassersteinDistance(reals_u8.size(-1), per_image, SCORE_DIRECTIONS)
    swd.update(reals_u8, real=True)
    swd.update(to_uint8(fakes), real=False)
    return float(swd.compute()["swd"])


def framework_reals(name: str, size: int) -> torch.Tensor:
    """Every image of the set (holdout included) as the framework decodes it: uint8."""
    from dcgan_lightning.data.decode import decode_image

    arrays = [decode_image(p, size, 3) for p in list_files(name)]
    return torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays])


def load_generators(run_dir: Path, features: int, size: int) -> dict[int, tuple[nn.Module, int]]:
    """{batches trained: (sampling G, z_dim)} of every saved evaluation point of a run."""
    from dcgan_lightning.models.generator import Generator

    found = {}
    for path in sorted(run_dir.glob("G_*.pt")):
        G = Generator(100, size, 3, features=features)
        G.load_state_dict(torch.load(path))
        found[int(path.stem[2:])] = (G, 100)
    for path in sorted((run_dir / "checkpoints").glob("epoch_*.ckpt")):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        hp = ckpt["hyper_parameters"]
        G = Generator(hp["z_dim"], size, 3, **hp["generator"])
        prefix = "ema_generator.module." if hp.get("ema") else "generator."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        G.load_state_dict(state)
        found[ckpt["global_step"] // 2] = (G, hp["z_dim"])
    return found


def val_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    keys = ("val/swd", "val/nn_ratio", "val/r_v")
    return {k: {int(r["step"]) + 1: float(r[k]) for r in rows if r.get(k)} for k in keys}


def score(args: argparse.Namespace) -> None:
    """Score every finished run (cached in its `scores.json`), then gather them all."""
    results: dict[str, Any] = {}
    for name in SETS:
        if not (args.out / name).exists():
            continue
        reals = None
        for run_dir in sorted(p for p in (args.out / name).iterdir() if p.is_dir()):
            if not (run_dir / "time.json").exists():
                continue  # still training
            cached = run_dir / "scores.json"
            if not cached.exists():
                if reals is None:
                    reals = framework_reals(name, args.image_size)
                swd = {}
                for batches, (G, z_dim) in load_generators(
                    run_dir, args.features, args.image_size
                ).items():
                    swd[batches] = {
                        mode: score_generator(samples(G, z_dim, len(reals), mode), reals)
                        for mode in ("eval", "train", "standing")
                    }
                cached.write_text(json.dumps(swd))
                print(run_dir, json.dumps(swd), flush=True)
            entry = {"val": val_curves(run_dir), "swd": json.loads(cached.read_text())}
            results[f"{name}/{run_dir.name}"] = entry | json.loads(
                (run_dir / "time.json").read_text()
            )
    (args.out / "scores.json").write_text(json.dumps(results, indent=1))
    print(report(results))


def mean_sd(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def report(results: dict[str, Any]) -> str:
    """Markdown tables: per set and arm, the in-run metrics at each evaluation and the post-hoc
    SWD of the final generator in each BatchNorm mode (mean ± sd over seeds), and s/batch."""
    arms: dict[tuple[str, str], list[dict]] = {}
    for key, entry in results.items():
        name, run = key.split("/")
        arms.setdefault((name, run.rsplit("_seed", 1)[0]), []).append(entry)
    lines = []
    for name in SETS:
        rows = {arm: runs for (n, arm), runs in arms.items() if n == name}
        if not rows:
            continue
        steps = sorted({int(b) for runs in rows.values() for r in runs for b in r["swd"]})
        lines += [
            f"\n### {name}\n",
            "| arm | seeds | metric | " + " | ".join(f"{b} batches" for b in steps) + " |",
            "|---|---|---|" + "---|" * len(steps),
        ]
        for arm, runs in rows.items():
            for metric in ("val/swd", "val/nn_ratio", "val/r_v"):
                cells = []
                for b in steps:
                    vals = [r["val"][metric][b] for r in runs if b in r["val"].get(metric, {})]
                    cells.append(mean_sd(vals, 3 if metric != "val/swd" else 1))
                if any(c != "-" for c in cells):
                    lines.append(f"| {arm} | {len(runs)} | {metric} | " + " | ".join(cells) + " |")
            for mode in ("eval", "train", "standing"):
                cells = [
                    mean_sd([r["swd"][str(b)][mode] for r in runs if str(b) in r["swd"]])
                    for b in steps
                ]
                lines.append(
                    f"| {arm} | {len(runs)} | SWD, {mode} BN | " + " | ".join(cells) + " |"
                )
        lines += [
            "",
            "| arm | s/batch (median of the run's batches; mean ± sd over seeds) |",
            "|---|---|",
        ]
        for arm, runs in rows.items():
            lines.append(f"| {arm} | {mean_sd([r['s_per_batch'] for r in runs], 3)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("train", "score", "time"))
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--arms", nargs="+", default=[RAW, *ARMS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--evals", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/studies/real_paintings"))
    args = parser.parse_args()
    args.out = args.out.resolve()
    if args.command == "time":
        time_arms(args)
    elif args.command == "score":
        os.nice(10)
        torch.set_num_threads(1)
        score(args)
    else:
        import multiprocessing

        runs = [(s, a, seed, args) for s, a, seed in plan(args)]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.jobs, initializer=worker_init) as pool:
            for line in pool.imap_unordered(one_run, runs):
                print(line, flush=True)


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """Parity first (Sisley: raw loop and canonical), then the study arms, fp32 last; seed by seed
    within each, so that a study cut short has its arms at the same seeds."""
    order = [
        ("sisley", [RAW, "canonical"]),
        ("sisley", ["dcgan_plus", "picasso", "diffaug_ema"]),
        ("pissarro", ["canonical", "dcgan_plus", "picasso", "diffaug_ema"]),
        ("sisley", ["fp32"]),
        ("sisley", ["monet", "ada", "ttur"]),
        ("pissarro", ["monet", "ada", "ttur"]),
    ]
    return [
        (name, arm, seed)
        for name, arms in order
        if name in args.sets
        for seed in args.seeds
        for arm in arms
        if arm in args.arms
    ]


if __name__ == "__main__":
    main()
