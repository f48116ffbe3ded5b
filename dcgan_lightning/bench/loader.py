"""Image-folder loading: the first epoch (decode) against cached epochs, and what training eats.

Run alone with `python -m dcgan_lightning.bench.loader`. Writes 400 256x256 JPEGs (drawn shapes
with noise texture, so they cost what photos and paintings cost to decode) to a temporary folder.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dcgan_lightning import bench
from dcgan_lightning.bench import median_seconds
from dcgan_lightning.data import cache, decode
from dcgan_lightning.data.image_folder import ImageFolderDataModule
from dcgan_lightning.data.shapes import draw_shape
from dcgan_lightning.models.discriminator import Discriminator
from dcgan_lightning.models.generator import Generator
from dcgan_lightning.models.losses import discriminator_loss, generator_loss

NUM_JPEGS, JPEG_SIZE, IMAGE_SIZE, BATCH = 400, 256, 64, 64
SECTION = "loader"


def write_jpegs(folder: Path, n: int = NUM_JPEGS, size: int = JPEG_SIZE) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng, noise = random.Random(0), np.random.default_rng(0)
    for i in range(n):
        pixels = np.asarray(draw_shape(rng, size), dtype=np.float32)
        pixels = pixels + noise.normal(0, 12, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(folder / f"{i:04d}.jpg", quality=90)
    return decode.list_images(folder)


def one_epoch(dm: ImageFolderDataModule) -> int:
    """Every training batch as the step receives it: loaded, then made float in [-1, 1]."""
    n = 0
    for batch in dm.train_dataloader():
        n += len(dm.on_after_batch_transfer(batch, 0))
    return n


def training_rate(repeats: int) -> float:
    """Images/s one DCGAN step consumes on this machine: 64 px, batch 64, bf16 autocast and
    channels_last on CPU (the default CPU set-up), D then G step with Adam."""
    G, D = Generator(100, IMAGE_SIZE, 3), Discriminator(IMAGE_SIZE, 3)
    G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 2e-4), torch.optim.Adam(D.parameters(), 2e-4)
    real = torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE).mul(2).sub(1)
    real = real.contiguous(memory_format=torch.channels_last)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    G, D, real = G.to(device), D.to(device), real.to(device)
    dtype = torch.bfloat16

    def step() -> None:
        with torch.autocast(device, dtype):
            fake = G(torch.randn(BATCH, 100, device=device))
            loss_d = discriminator_loss("bce", D(real), D(fake.detach()))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        with torch.autocast(device, dtype):
            loss_g = generator_loss("bce", D(fake))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if device == "cuda":
            torch.cuda.synchronize()

    median_seconds(step, 2)  # warm-up
    return BATCH / median_seconds(step, repeats)


def run(quick: bool = False) -> list[dict]:
    repeats = 3 if quick else 7
    rows = []

    def row(case: str, value: float, unit: str, note: str = "") -> None:
        rows.append(bench.row(SECTION, case, value, unit, note))

    with tempfile.TemporaryDirectory() as tmp:
        files = write_jpegs(Path(tmp) / "jpegs")
        n = len(files)
        note = f"{n} JPEGs {JPEG_SIZE}px -> {IMAGE_SIZE}px"
        size, channels = IMAGE_SIZE, 3
        one = median_seconds(lambda: [decode.decode_image(f, size, channels) for f in files], 1)
        row("decode, 1 thread", n / one, "img/s", note)
        pooled = median_seconds(lambda: decode.decode_images(files, size, channels), 1)
        row("decode, thread pool", n / pooled, "img/s", note)

        def make(workers: int = 0) -> ImageFolderDataModule:
            return ImageFolderDataModule(
                root=Path(tmp) / "jpegs", cache_dir=Path(tmp) / "cache", image_size=IMAGE_SIZE,
                batch_size=BATCH, num_workers=workers,
            )  # fmt: skip

        def first_epoch() -> None:
            cache.clear_memory()
            for entry in (Path(tmp) / "cache").glob("*.pt"):
                entry.unlink()
            dm = make()
            dm.prepare_data()
            dm.setup("fit")
            one_epoch(dm)

        row("first epoch (decode + cache write)", n / median_seconds(first_epoch, 1), "img/s", note)

        def from_disk() -> None:
            cache.clear_memory()
            make().setup("fit")

        from_disk_rate = n / median_seconds(from_disk, repeats)
        row("setup from disk cache (new run)", from_disk_rate, "img/s", note)
        dm = make()
        dm.setup("fit")
        per_epoch = one_epoch(dm)
        cached = per_epoch / median_seconds(lambda: one_epoch(dm), repeats)
        row("cached epoch, num_workers=0", cached, "img/s", "uint8 batches -> float [-1, 1]")
        dm2 = make(workers=2)
        dm2.setup("fit")
        one_epoch(dm2)  # starts the persistent workers
        workers_rate = per_epoch / median_seconds(lambda: one_epoch(dm2), repeats)
        row("cached epoch, num_workers=2", workers_rate, "img/s", "persistent workers")
        cache.clear_memory()

    train = training_rate(repeats)
    row("training step consumes", train, "img/s", f"DCGAN {IMAGE_SIZE}px batch {BATCH}, bf16")
    row("cached loader / training step", cached / train, "x", "target >= 10x")
    return rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(f"{r['case']:<38} {r['value']:>12,.1f} {r['unit']:<6} {r['note']}")
