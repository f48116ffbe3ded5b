"""`python -m dcgan_lightning.generate ckpt_path=PATH [key=value ...]`: images from a trained GAN.

One run writes one kind of output: `num_images` image files (default), one grid (`grid=true`), a
latent walk (`interpolate=true`) or a zip of JPEGs (`zip=images.zip`, Kaggle's layout). The
settings that made the images (checkpoint, seed, truncation, ...) are recorded with them: in
`generation.json` beside the files, as the comment of a zip, and inside grid and walk images.
A conditional checkpoint draws `num_images` per class: `label=Trouser` (a name or an index),
`labels=[Trouser,Bag]`, or every class; files are named `<class>_<i>`, a grid has a row per class.
See conf/generate.yaml for every option.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from dcgan_lightning.cli import run_cli, run_task
from dcgan_lightning.compose import CONF_DIR
from dcgan_lightning.errors import UserError, UserValueError

if TYPE_CHECKING:  # imported where used: `--help` and `--cfg job` load neither torch nor PIL
    import torch
    from PIL import Image

    from dcgan_lightning.generation.loading import TrainedGenerator

log = logging.getLogger(__name__)
CONFIG_PATH = str(CONF_DIR)  # conf/ in a checkout, dcgan_lightning/conf in a wheel

MODES = ("zip", "grid", "interpolate")
FORMATS = ("png", "jpg")  # generation.images.FORMATS, checked in a test
# What Kaggle's "I'm Something of a Painter Myself" accepts: a zip of 7,000-10,000 256x256 JPEGs.
KAGGLE_IMAGES, KAGGLE_SIZE = (7_000, 10_000), 256
RECORD = "generation.json"  # the settings that made the images in a folder
# Files a previous run may have left in `out`: `overwrite=true` replaces exactly these.
OUR_FILES = re.compile(
    rf"^(([A-Za-z0-9_.-]+_)?(\d{{6,}}|grid|linear|slerp)\.(png|jpg|gif)|{re.escape(RECORD)})$"
)


class OutputExistsError(UserError, FileExistsError):
    """Earlier outputs where this run would write, and no `overwrite=true`."""


def output_mode(cfg: DictConfig) -> str:
    chosen = [mode for mode in MODES if cfg.get(mode)]
    if len(chosen) > 1:
        raise UserValueError(f"choose one of zip=..., grid=true, interpolate=true; got {chosen}")
    return chosen[0] if chosen else "files"


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise UserValueError(f"device={device}: not a device; use auto, cpu, cuda, cuda:N") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserValueError(f"device={device}, but no CUDA GPU is visible: use device=cpu or auto")
    return chosen


def default_out(ckpt_path: Path) -> Path:
    """`<run dir>/generated/<time>/`: outputs stay with the run that made the checkpoint. An
    exported folder or Hub id: `outputs/generated/<its name>/<time>/` (the export stays as is)."""
    if not ckpt_path.is_file():
        name = ckpt_path.name if ckpt_path.is_dir() else str(ckpt_path).replace("/", "--")
        return Path("outputs", "generated", name, datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    ckpt_dir = ckpt_path.resolve().parent
    run_dir = ckpt_dir.parent if ckpt_dir.name == "checkpoints" else ckpt_dir
    return run_dir / "generated" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def claim(dest: Path, overwrite: bool, is_zip: bool) -> None:
    """Refuse to write over earlier outputs unless `overwrite`; then clear ours from `dest`."""
    if is_zip:
        if dest.exists() and not overwrite:
            raise OutputExistsError(f"{dest} exists: pass overwrite=true to replace it")
        return
    if dest.exists() and not dest.is_dir():
        raise OutputExistsError(f"out={dest} is a file, not a folder: pass another out=")
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"out={dest} is not empty: pass overwrite=true to replace its images, or another out="
        )
    for path in dest.iterdir():
        if path.is_file() and OUR_FILES.match(path.name):
            path.unlink()


def render(
    generator: TrainedGenerator,
    z: torch.Tensor,
    batch_size: int,
    size: int | None,
    label: int | None = None,
) -> Iterator[Image.Image]:
    """G(z) (of class `label`) as PIL images, `batch_size` at a time, so memory does not grow
    with len(z)."""
    import torch

    from dcgan_lightning.generation.images import to_pil, to_uint8

    for start in range(0, len(z), batch_size):
        chunk = z[start : start + batch_size]
        labels = None if label is None else torch.full((len(chunk),), label, dtype=torch.long)
        with torch.inference_mode():
            images = generator(chunk, labels)
        yield from to_pil(to_uint8(images), size)


def class_prefixes(
    generator: TrainedGenerator, classes: list[int] | None
) -> list[tuple[str, int | None]]:
    """(file name prefix, class) per set of images: `<class>_`, or one unnamed unconditional set."""
    from dcgan_lightning.generation.loading import safe_name

    if classes is None:
        return [("", None)]
    return [(f"{safe_name(generator.class_names[c])}_", c) for c in classes]


def chosen_classes(generator: TrainedGenerator, cfg: DictConfig) -> list[int] | None:
    """The class indices to draw: `label=`, `labels=[...]`, or every class; None when the
    generator is unconditional (which refuses a label)."""
    asked = [cfg.label] if cfg.get("label") is not None else list(cfg.get("labels") or [])
    if generator.class_names is None:
        if asked:
            raise UserValueError(
                f"label(s) {asked} given, but {cfg.ckpt_path} is unconditional: drop label=/labels="
            )
        return None
    if not asked:
        return list(range(len(generator.class_names)))
    return [generator.label_index(label) for label in asked]


def sample_images(
    generator: TrainedGenerator,
    n: int,
    seed: int,
    batch_size: int,
    size: int | None = None,
    truncation: float | None = None,
    label: int | None = None,
) -> Iterator[Image.Image]:
    """Image i comes from the i-th z of a CPU RNG seeded with `seed`, whatever the batch size
    (and, for a conditional generator, whatever the class `label`)."""
    import torch
    from rich.progress import MofNCompleteColumn, Progress

    rng = torch.Generator().manual_seed(seed)
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn()) as bar:
        task = bar.add_task("Generating", total=n)
        for start in range(0, n, batch_size):
            z = generator.sample_noise(min(batch_size, n - start), rng, truncation)
            for image in render(generator, z, batch_size, size, label):
                yield image
                bar.advance(task)


def walk_images(
    generator: TrainedGenerator,
    seeds: list[int],
    steps: int,
    method: str,
    batch_size: int,
    size: int | None = None,
    truncation: float | None = None,
    label: int | None = None,
) -> list[Image.Image]:
    """Frames walking through the first z of each seed: row k goes from seeds[k] to seeds[k+1]
    (within class `label` for a conditional generator)."""
    import torch

    from dcgan_lightning.generation.latent import latent_walk

    anchors = torch.cat(
        [generator.sample_noise(1, torch.Generator().manual_seed(s), truncation) for s in seeds]
    )
    z = latent_walk(anchors, steps, method).flatten(0, 1)
    return list(render(generator, z, batch_size, size, label))


def write_walks(
    generator: TrainedGenerator,
    cfg: DictConfig,
    out: Path,
    fmt: str,
    record: str,
    classes: list[int] | None = None,
) -> None:
    """Per method, a grid (a row per pair of seeds) and a GIF that walks there and back; a
    conditional generator walks within one class."""
    from dcgan_lightning.generation.images import encode, grid, save_gif
    from dcgan_lightning.generation.latent import METHODS

    seeds, steps = list(cfg.walk_seeds), cfg.walk_steps
    if classes is not None and len(classes) != 1:
        raise UserValueError("interpolate=true walks within one class: pass label=NAME (or index)")
    label = classes[0] if classes else None
    out.mkdir(parents=True, exist_ok=True)
    for method in METHODS:
        frames = walk_images(
            generator, seeds, steps, method, cfg.batch_size, cfg.size, cfg.truncation, label
        )
        (out / f"{method}.{fmt}").write_bytes(encode(grid(frames, nrow=steps), fmt, record))
        # Each row's first frame repeats the previous row's last: keep it once.
        path = [f for i, f in enumerate(frames) if i == 0 or i % steps != 0]
        save_gif(path + path[-2:0:-1], out / f"{method}.gif", record)


def settings(
    cfg: DictConfig, generator: TrainedGenerator, mode: str, classes: list[int] | None = None
) -> str:
    """What made the images, as JSON: enough to make them again (not batch_size: no effect)."""
    made = {
        "ckpt_path": str(
            Path(cfg.ckpt_path).resolve() if Path(cfg.ckpt_path).exists() else cfg.ckpt_path
        ),
        "ema": generator.ema,
        "noise": generator.noise,
        "truncation": cfg.truncation,
        "mode": mode,
        "size": cfg.size or generator.image_size,
    }
    if mode == "interpolate":
        made |= {"walk_seeds": list(cfg.walk_seeds), "walk_steps": cfg.walk_steps}
    else:
        made |= {"seed": cfg.seed, "num_images": cfg.num_images}
    if classes is not None:  # num_images per class
        made["labels"] = [generator.class_names[c] for c in classes]
    return json.dumps(made, indent=2)


def check_truncation(truncation: float | None, noise: str) -> None:
    """`generation.noise.check_truncation`, its complaint a `UserValueError`."""
    from dcgan_lightning.generation.noise import check_truncation as check

    try:
        check(truncation, noise)
    except ValueError as err:
        raise UserValueError(f"truncation={truncation}: {err}") from err


def check_options(cfg: DictConfig, mode: str) -> None:
    if cfg.num_images < 1 or cfg.batch_size < 1:
        raise UserValueError("num_images and batch_size must be >= 1")
    if cfg.format is not None and cfg.format not in FORMATS:
        raise UserValueError(f"format must be one of {sorted(FORMATS)}, got {cfg.format!r}")
    if cfg.size is not None and cfg.size < 1:
        raise UserValueError(f"size must be a positive number of pixels, got {cfg.size}")
    if mode == "interpolate" and (len(cfg.walk_seeds) < 2 or cfg.walk_steps < 2):
        raise UserValueError("interpolate=true needs at least 2 walk_seeds and walk_steps >= 2")
    check_truncation(cfg.truncation, "normal")  # the noise-law check waits for the checkpoint


def check_kaggle_zip(
    cfg: DictConfig, generator: TrainedGenerator, classes: list[int] | None
) -> None:
    """`zip=` with `kaggle=true` (the default): refuse, before anything is written, a zip that
    Kaggle's "I'm Something of a Painter Myself" rejects (not 7,000-10,000 256x256 JPEGs)."""
    if not cfg.kaggle:
        return
    count = cfg.num_images * (len(classes) if classes is not None else 1)
    side = cfg.size or generator.image_size
    fmt = cfg.format or "jpg"
    low, high = KAGGLE_IMAGES
    problems = [f"{count:,} images (it takes {low:,}-{high:,})"] * (not low <= count <= high)
    problems += [f"{side}x{side} px (it takes {KAGGLE_SIZE}x{KAGGLE_SIZE})"] * (side != KAGGLE_SIZE)
    problems += [f"{fmt} files (it takes jpg)"] * (fmt != "jpg")
    if not problems:
        return
    sets = len(classes) if classes is not None else 1  # num_images is per class
    per_class = f" (per class: {sets} classes)" if classes is not None else ""
    fixes = [f"num_images={-(-low // sets)}{per_class}"] * (not low <= count <= high)
    fixes += [f"size={KAGGLE_SIZE}"] * (side != KAGGLE_SIZE) + ["format=jpg"] * (fmt != "jpg")
    upscale = (
        f" (the model makes {generator.image_size} px images: size={KAGGLE_SIZE} upscales them)"
        if generator.image_size < KAGGLE_SIZE and side != KAGGLE_SIZE
        else ""
    )
    raise UserValueError(
        f"zip={cfg.zip} is Kaggle's submission layout, and Kaggle would reject this one: "
        f"{'; '.join(problems)}. Pass {' '.join(fixes)}{upscale}, or kaggle=false for a zip of "
        "any count and size"
    )


def generate(cfg: DictConfig) -> Path:
    """Write the images `cfg` asks for; return the folder or zip written."""
    from dcgan_lightning.generation.images import ImageWriter, encode, grid
    from dcgan_lightning.generation.loading import load_generator

    mode = output_mode(cfg)
    check_options(cfg, mode)
    ckpt_path = Path(cfg.ckpt_path)
    generator = load_generator(ckpt_path, resolve_device(cfg.device), cfg.ema)
    check_truncation(cfg.truncation, generator.noise)
    classes = chosen_classes(generator, cfg)
    if mode == "zip":
        check_kaggle_zip(cfg, generator, classes)
    fmt = cfg.format or ("jpg" if mode == "zip" else "png")
    dest = Path(cfg.zip) if mode == "zip" else Path(cfg.out or default_out(ckpt_path))
    claim(dest, cfg.overwrite, is_zip=mode == "zip")
    side = generator.image_size
    if cfg.size is not None and cfg.size > side:
        log.warning(
            "The model makes %d px images: upscaling them to %d px with Lanczos adds no detail "
            "(train at a larger data.image_size for sharper images)",
            side,
            cfg.size,
        )

    record = settings(cfg, generator, mode, classes)
    if mode == "interpolate":
        write_walks(generator, cfg, dest, fmt, record, classes)
    else:
        # (file name prefix, images) per class; one unnamed set for an unconditional generator.
        options = (cfg.num_images, cfg.seed, cfg.batch_size, cfg.size, cfg.truncation)
        sets = [
            (prefix, sample_images(generator, *options, label))
            for prefix, label in class_prefixes(generator, classes)
        ]
        if mode == "grid":
            dest.mkdir(parents=True, exist_ok=True)
            images = [image for _, images in sets for image in images]
            # A row per class (the same z in each column), else a near-square grid.
            nrow = cfg.num_images if classes is not None else math.ceil(math.sqrt(len(images)))
            (dest / f"grid.{fmt}").write_bytes(encode(grid(images, nrow), fmt, record))
        else:
            width = max(6, len(str(cfg.num_images - 1)))
            with ImageWriter(dest, fmt, mode == "zip", comment=record) as writer:
                for prefix, images in sets:
                    for i, image in enumerate(images):
                        writer.add(f"{prefix}{i:0{width}d}", image)
    if mode != "zip":  # a zip carries it as its comment: Kaggle's zip holds images only
        (dest / RECORD).write_text(record + "\n")
    log.info("Wrote %s", dest)
    return dest


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="generate")
def main(cfg: DictConfig) -> None:
    """Generate; a mistake (a missing checkpoint, an unknown label) is one message, exit 2."""
    run_task(generate, cfg)


if __name__ == "__main__":
    run_cli(main, "generate", CONFIG_PATH)
