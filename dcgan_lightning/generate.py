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

import hydra
import torch
from omegaconf import DictConfig
from PIL import Image
from rich.progress import MofNCompleteColumn, Progress

from dcgan_lightning.compose import CONF_DIR
from dcgan_lightning.generation.images import (
    FORMATS,
    ImageWriter,
    encode,
    grid,
    save_gif,
    to_pil,
    to_uint8,
)
from dcgan_lightning.generation.latent import METHODS, latent_walk
from dcgan_lightning.generation.loading import TrainedGenerator, load_generator, safe_name
from dcgan_lightning.generation.noise import check_truncation

log = logging.getLogger(__name__)

MODES = ("zip", "grid", "interpolate")
RECORD = "generation.json"  # the settings that made the images in a folder
# Files a previous run may have left in `out`: `overwrite=true` replaces exactly these.
OUR_FILES = re.compile(
    rf"^(([A-Za-z0-9_.-]+_)?(\d{{6,}}|grid|linear|slerp)\.(png|jpg|gif)|{re.escape(RECORD)})$"
)


def output_mode(cfg: DictConfig) -> str:
    chosen = [mode for mode in MODES if cfg.get(mode)]
    if len(chosen) > 1:
        raise ValueError(f"choose one of zip=..., grid=true, interpolate=true; got {chosen}")
    return chosen[0] if chosen else "files"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_out(ckpt_path: Path) -> Path:
    """`<run dir>/generated/<time>/`: outputs stay with the run that made the checkpoint."""
    ckpt_dir = ckpt_path.resolve().parent
    run_dir = ckpt_dir.parent if ckpt_dir.name == "checkpoints" else ckpt_dir
    return run_dir / "generated" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def claim(dest: Path, overwrite: bool, is_zip: bool) -> None:
    """Refuse to write over earlier outputs unless `overwrite`; then clear ours from `dest`."""
    if is_zip:
        if dest.exists() and not overwrite:
            raise FileExistsError(f"{dest} exists: pass overwrite=true to replace it")
        return
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"out={dest} is a file, not a folder")
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
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
    if classes is None:
        return [("", None)]
    return [(f"{safe_name(generator.class_names[c])}_", c) for c in classes]


def chosen_classes(generator: TrainedGenerator, cfg: DictConfig) -> list[int] | None:
    """The class indices to draw: `label=`, `labels=[...]`, or every class; None when the
    generator is unconditional (which refuses a label)."""
    asked = [cfg.label] if cfg.get("label") is not None else list(cfg.get("labels") or [])
    if generator.class_names is None:
        if asked:
            raise ValueError(f"label(s) {asked} given, but {cfg.ckpt_path} is unconditional")
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
    seeds, steps = list(cfg.walk_seeds), cfg.walk_steps
    if classes is not None and len(classes) != 1:
        raise ValueError("interpolate=true walks within one class: pass label=NAME (or index)")
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
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
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


def check_options(cfg: DictConfig, mode: str) -> None:
    if cfg.num_images < 1 or cfg.batch_size < 1:
        raise ValueError("num_images and batch_size must be >= 1")
    if cfg.format is not None and cfg.format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {cfg.format!r}")
    if cfg.size is not None and cfg.size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {cfg.size}")
    if mode == "interpolate" and (len(cfg.walk_seeds) < 2 or cfg.walk_steps < 2):
        raise ValueError("interpolate=true needs at least 2 walk_seeds and walk_steps >= 2")
    check_truncation(cfg.truncation, "normal")  # the noise-law check waits for the checkpoint


def generate(cfg: DictConfig) -> Path:
    """Write the images `cfg` asks for; return the folder or zip written."""
    mode = output_mode(cfg)
    check_options(cfg, mode)
    ckpt_path = Path(cfg.ckpt_path)
    generator = load_generator(ckpt_path, resolve_device(cfg.device), cfg.ema)
    check_truncation(cfg.truncation, generator.noise)
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

    classes = chosen_classes(generator, cfg)
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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="generate")
def main(cfg: DictConfig) -> None:
    generate(cfg)


if __name__ == "__main__":
    main()
