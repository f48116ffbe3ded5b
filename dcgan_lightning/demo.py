"""`python -m dcgan_lightning.demo ckpt_path=PATH|DIR|HUB_ID [server_port=7860]`: a trained
generator in the browser.

A Gradio page (the `[demo]` extra) shows a grid of images from a seed (a button draws a new one),
a truncation slider, a class picker for a conditional generator, an interpolation strip between
two seeds, and a download of what is shown. The generator is loaded once, on the CPU or a GPU.
Images are made as `generate` makes them (`generation/`): the grid of seed S holds `generate
seed=S`'s first images (for an unconditional model, `grid=true`'s grid itself), the strip is the
row of `generate interpolate=true walk_seeds=[S,T]`. See conf/demo.yaml.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from PIL import Image

from dcgan_lightning.cli import run_cli, run_task
from dcgan_lightning.compose import CONF_DIR
from dcgan_lightning.errors import UserError
from dcgan_lightning.generate import render, resolve_device, walk_images
from dcgan_lightning.generation import CheckpointError, TrainedGenerator, load_generator
from dcgan_lightning.generation.images import ZIP_DATE, encode, grid
from dcgan_lightning.generation.latent import METHODS
from dcgan_lightning.generation.noise import check_truncation
from dcgan_lightning.resume import find_last

log = logging.getLogger(__name__)
CONFIG_PATH = str(CONF_DIR)  # conf/ in a checkout, dcgan_lightning/conf in a wheel

INSTALL = "pip install 'dcgan_lightning[demo]'"
MAX_SEED = 2**31 - 1
OUTPUTS = Path("outputs")  # where `ckpt_path=last` looks, as training writes runs


def resolve_ckpt(ckpt_path: str) -> str:
    """`last`: the newest `last.ckpt` of any task under outputs/; anything else as given (a
    checkpoint, an exported folder or a Hub id: `load_generator` tells them apart)."""
    if ckpt_path != "last":
        return ckpt_path
    tasks = [task for task in OUTPUTS.glob("*") if task.is_dir()] if OUTPUTS.is_dir() else []
    found = [path for path in map(find_last, tasks) if path is not None]
    if not found:
        raise UserError(f"ckpt_path=last: no runs/*/checkpoints/last.ckpt under {OUTPUTS}/*/")
    return str(max(found, key=lambda path: path.stat().st_mtime))


class Explorer:
    """What the page shows, made from one loaded generator: a seed's grid and the strip between
    two seeds, at a truncation, for a class. Pure functions of their inputs: the same settings
    give the same pixels, in the page, through the API or from `generate`."""

    def __init__(
        self, generator: TrainedGenerator, ckpt: str, num_images: int, walk_steps: int, method: str
    ) -> None:
        if num_images < 1 or walk_steps < 2:
            raise UserError("num_images must be >= 1 and walk_steps >= 2")
        if method not in METHODS:
            raise UserError(f"walk_method must be one of {METHODS}, got {method!r}")
        self.generator, self.ckpt = generator, ckpt
        self.num_images, self.walk_steps, self.method = num_images, walk_steps, method
        self._downloads = tempfile.TemporaryDirectory(prefix="dcgan-demo-")

    @property
    def class_names(self) -> list[str] | None:
        return self.generator.class_names

    @property
    def max_truncation(self) -> float:
        """The slider's end: uniform noise can only be scaled down (see `generation.noise`)."""
        return 1.0 if self.generator.noise == "uniform" else 2.0

    def settings(self, seed: int, seed_b: int, truncation: float | None, label: str | None) -> dict:
        """What made the images: enough to make them again with `generate`."""
        made = {"ckpt_path": self.ckpt, "ema": self.generator.ema, "noise": self.generator.noise,
                "truncation": truncation, "seed": seed, "num_images": self.num_images,
                "walk_seeds": [seed, seed_b], "walk_steps": self.walk_steps,
                "walk_method": self.method}  # fmt: skip
        return made | ({"label": label} if label is not None else {})

    def _inputs(
        self, truncation: float | None, label: str | None
    ) -> tuple[float | None, int | None]:
        psi = float(truncation) if truncation else None  # 0 on the slider: off, as trained
        try:
            check_truncation(psi, self.generator.noise)
            if self.class_names is None and label is not None:
                raise ValueError(f"class {label!r} asked for, but the generator is unconditional")
            index = None if self.class_names is None else self.generator.label_index(label or 0)
        except ValueError as error:
            raise UserError(str(error)) from None
        return psi, index

    def grid(
        self, seed: int, truncation: float | None = None, label: str | None = None
    ) -> Image.Image:
        """The first `num_images` images of `seed`, in a near-square grid."""
        psi, index = self._inputs(truncation, label)
        z = self.generator.sample_noise(self.num_images, torch.Generator().manual_seed(seed), psi)
        images = list(render(self.generator, z, self.num_images, None, index))
        return grid(images, math.ceil(math.sqrt(len(images))))

    def strip(
        self, seed: int, seed_b: int, truncation: float | None = None, label: str | None = None
    ) -> Image.Image:
        """`walk_steps` images from the first image of `seed` to that of `seed_b`."""
        psi, index = self._inputs(truncation, label)
        frames = walk_images(self.generator, [seed, seed_b], self.walk_steps, self.method,
                             self.walk_steps, None, psi, index)  # fmt: skip
        return grid(frames, self.walk_steps)

    def show(
        self, seed: float, seed_b: float, truncation: float, label: str | None = None
    ) -> tuple[Image.Image, Image.Image, str]:
        """The grid, the strip and a zip of both (PNGs carrying their settings, and the settings
        as JSON), for the page's inputs."""
        seed, seed_b = int(seed or 0), int(seed_b or 0)
        psi = float(truncation) if truncation else None
        board, walk = self.grid(seed, psi, label), self.strip(seed, seed_b, psi, label)
        made = self.settings(seed, seed_b, psi, label)
        record = json.dumps(made, indent=2)
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{label}_" if label is not None else "")
        path = Path(self._downloads.name) / f"dcgan_{tag}seed{seed}_to_{seed_b}_psi{psi or 0}.zip"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in (("grid.png", encode(board, "png", record)),
                               (f"{self.method}.png", encode(walk, "png", record)),
                               ("generation.json", (record + "\n").encode())):  # fmt: skip
                archive.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE), data)
        path.write_bytes(buffer.getvalue())
        return board, walk, str(path)


def new_seed() -> int:
    """A seed the visitor has not seen: from a private RNG, so nothing else's draws move."""
    return _SEEDS.randrange(MAX_SEED)


_SEEDS = random.Random()


def import_gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing reported to Gradio
    try:
        import gradio
    except ImportError:
        raise UserError(f"the demo needs Gradio, which is not installed: {INSTALL}") from None
    return gradio


def build_app(explorer: Explorer, seed: int) -> Any:
    """The page; its event `show` (and `new_seed`) is also an API endpoint (gradio_client)."""
    gr = import_gradio()
    g, names = explorer.generator, explorer.class_names
    about = (f"**{explorer.ckpt}**: {g.image_size} px, {g.channels} channel(s), z of {g.z_dim} "
             f"({g.noise}), {'EMA' if g.ema else 'raw'} weights"
             + (f", {len(names)} classes" if names else ""))  # fmt: skip
    with gr.Blocks(title="DCGAN explorer") as app:
        gr.Markdown(f"## DCGAN explorer\n{about}")
        with gr.Row():
            seed_box = gr.Number(seed, label="Seed", precision=0, minimum=0, elem_id="seed")
            new = gr.Button("New seed", variant="primary", elem_id="new-seed")
            psi = gr.Slider(
                0,
                explorer.max_truncation,
                value=0,
                step=0.05,
                elem_id="truncation",
                label="Truncation psi (0: off; smaller: more typical, less varied)",
            )
            label = None
            if names:
                label = gr.Dropdown(names, value=names[0], label="Class", elem_id="label")
        board = gr.Image(label=f"Seed grid ({explorer.num_images} images)", type="pil",
                         format="png", elem_id="grid", interactive=False)  # fmt: skip
        with gr.Row():
            seed_b = gr.Number(seed + 1, label="Walk to seed", precision=0, minimum=0,
                               elem_id="seed-b")  # fmt: skip
        walk = gr.Image(label=f"Interpolation ({explorer.method}, {explorer.walk_steps} steps)",
                        type="pil", format="png", elem_id="walk", interactive=False)  # fmt: skip
        download = gr.DownloadButton("Download what is shown (zip)", elem_id="download")
        inputs = [seed_box, seed_b, psi] + ([label] if label is not None else [])
        outputs = [board, walk, download]

        def render_page(*values: Any) -> tuple[Image.Image, Image.Image, str]:
            try:
                return explorer.show(*values)
            except UserError as error:  # shown on the page, not only in the server's log
                raise gr.Error(str(error)) from None

        show = dict(fn=render_page, inputs=inputs, outputs=outputs)
        app.load(**show, api_name="show")
        for control in (seed_box, seed_b) + ((label,) if label is not None else ()):
            control.change(**show, api_visibility="private")
        psi.release(**show, api_visibility="private")
        new.click(new_seed, outputs=seed_box, api_name="new_seed")  # the seed's change shows
    return app


def serve(cfg: DictConfig, block: bool = True) -> Any:
    """Load the generator once, build the page and serve it; `block=False` returns the running
    app (close it with `.close()`)."""
    ckpt = resolve_ckpt(str(cfg.ckpt_path))
    try:
        generator = load_generator(ckpt, resolve_device(cfg.device), cfg.ema)
    except (CheckpointError, FileNotFoundError) as error:
        raise UserError(f"ckpt_path={cfg.ckpt_path}: {error}") from None
    explorer = Explorer(generator, ckpt, cfg.num_images, cfg.walk_steps, cfg.walk_method)
    app = build_app(explorer, cfg.seed)
    app.explorer = explorer  # for tests and embedding
    log.info("Starting the page at http://%s:%d/ (Ctrl+C stops it)", cfg.server_name,
             cfg.server_port)  # fmt: skip
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    app.queue(default_concurrency_limit=1)  # one model: one render at a time
    app.launch(server_name=cfg.server_name, server_port=cfg.server_port,
               prevent_thread_lock=not block, quiet=not block)  # fmt: skip
    return app


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="demo")
def main(cfg: DictConfig) -> None:
    """Serve the explorer; a mistake (a missing checkpoint, a bad key) is one message, exit 2."""
    run_task(serve, cfg)


if __name__ == "__main__":
    run_cli(main, "demo", CONFIG_PATH)
