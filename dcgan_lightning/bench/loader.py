"""Image-folder loading: the first epoch (decode) against cached epochs, and what training eats;
the memory a decode peaks at, and what two processes reading one cache use against one.

Run alone with `python -m dcgan_lightning.bench.loader`. Writes 2,000 256x256 JPEGs (drawn shapes
with noise texture, so they cost what photos and paintings cost to decode) to a temporary folder.
Memory is measured in fresh subprocesses, above what `import torch` (and the decoder) take.
"""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
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

NUM_JPEGS, JPEG_SIZE, IMAGE_SIZE, BATCH = 2000, 256, 64, 64
MEMORY_SIZE = 128  # decoded size for the memory rows: 2,000 x 3 x 128 x 128 = 98 MB
SECTION = "loader"

# Peak RSS of one decode, above the process after `import torch` and the decoder (bytes), and
# the decoded size. The kernel's high-water mark is reset after the imports (clear_refs 5).
DECODE_PEAK = """
import json, sys
from pathlib import Path
import torch
from dcgan_lightning.bench.loader import stacked_decode, status_kb
from dcgan_lightning.data import decode
files, size, how = decode.list_images(Path(sys.argv[1])), int(sys.argv[2]), sys.argv[3]
Path("/proc/self/clear_refs").write_text("5")
base = status_kb("VmRSS")
fn = decode.decode_images if how == "preallocated" else stacked_decode
images = fn(files, size, 3)[0]
print(json.dumps({"peak": (status_kb("VmHWM") - base) * 1024, "size": images.nbytes}))
"""

# A process reading the cache as a GPU run's host does (setup, an epoch of uint8 batches: the
# conversion to float runs on the device), reporting its anonymous memory before loading, then
# waiting for a line on stdin while the parent reads its smaps.
CACHE_READER = """
import json, sys
from pathlib import Path
import torch
from dcgan_lightning.bench.loader import rollup_kb
from dcgan_lightning.data.image_folder import ImageFolderDataModule
anon = rollup_kb("Anonymous")
dm = ImageFolderDataModule(root=sys.argv[1], cache_dir=sys.argv[2], image_size=int(sys.argv[3]),
                           batch_size=64)
dm.setup("fit")
for batch in dm.train_dataloader():
    pass
print(json.dumps({"anon_before": anon}), flush=True)
sys.stdin.readline()
"""


def write_jpegs(folder: Path, n: int = NUM_JPEGS, size: int = JPEG_SIZE) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng, noise = random.Random(0), np.random.default_rng(0)
    for i in range(n):
        pixels = np.asarray(draw_shape(rng, size), dtype=np.float32)
        pixels = pixels + noise.normal(0, 12, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(folder / f"{i:04d}.jpg", quality=90)
    return decode.list_images(folder)


def status_kb(field: str, pid: str = "self") -> int:
    """A field of /proc/<pid>/status (VmRSS, VmHWM), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def rollup_kb(field: str, pid: str = "self") -> int:
    """A field of /proc/<pid>/smaps_rollup (Pss, Anonymous), in kB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def mapped_pss_kb(pid: int, path: Path) -> int:
    """Proportional set size of `path`'s mappings in process `pid`: its share of the page cache's
    copy (a page mapped by two processes counts half in each)."""
    total, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a mapping's header
            inside = fields[-1] == str(path)
        elif inside and line.startswith("Pss:"):
            total += int(fields[1])
    return total


def stacked_decode(files: list[Path], size: int, channels: int) -> tuple[torch.Tensor, list]:
    """The decode before the preallocated buffer (list of arrays, `np.stack`, `permute().
    contiguous()`), kept as the bench's reference row."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        arrays = list(pool.map(lambda f: decode.decode_image(f, size, channels), files))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), []


def decode_peak(folder: Path, how: str) -> dict:
    """Peak RSS of decoding `folder` at MEMORY_SIZE in a fresh process, and the decoded bytes."""
    args = [sys.executable, "-c", DECODE_PEAK, str(folder), str(MEMORY_SIZE), how]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def readers_memory(folder: Path, cache_dir: Path, count: int) -> int:
    """Bytes `count` processes reading one cache at once take together: their PSS of the cache
    file plus the anonymous memory each gained by loading it."""
    (cache_file,) = cache_dir.glob("*.pt")
    args = [sys.executable, "-c", CACHE_READER, str(folder), str(cache_dir), str(MEMORY_SIZE)]
    procs = [subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(count)]  # fmt: skip
    try:
        before = [json.loads(p.stdout.readline())["anon_before"] for p in procs]
        total = 0
        for proc, anon in zip(procs, before, strict=True):
            gained = rollup_kb("Anonymous", str(proc.pid)) - anon
            total += mapped_pss_kb(proc.pid, cache_file) + max(0, gained)
    finally:
        for proc in procs:
            proc.communicate("\n")
    return total * 1024


def memory_rows(folder: Path, tmp: Path) -> list[tuple[str, float, str, str]]:
    """Decode peak (preallocated, and the stacking decode for reference) over the decoded size;
    two cache readers over one."""
    rows = []
    for how in ("preallocated", "stacked"):
        got = decode_peak(folder, how)
        mb = got["size"] / 2**20
        note = f"peak {got['peak'] / 2**20:.0f} MB for {mb:.0f} MB decoded" + (
            "; target <= 1.3x" if how == "preallocated" else "; the decode before this one"
        )
        rows.append(
            (f"decode peak RSS / decoded size ({how})", got["peak"] / got["size"], "x", note)
        )
    cache_dir = tmp / "memory-cache"
    ImageFolderDataModule(root=folder, cache_dir=cache_dir, image_size=MEMORY_SIZE).load_images()
    cache.clear_memory()
    gc.collect()
    one, two = readers_memory(folder, cache_dir, 1), readers_memory(folder, cache_dir, 2)
    note = f"{one / 2**20:.0f} MB alone, {two / 2**20:.0f} MB together (PSS); target <= 1.2x"
    rows.append(("two cache readers / one", two / one, "x", note))
    return rows


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
        on_device = make()
        on_device.on_device = True  # forced: the device path, here on the CPU
        on_device.setup("fit")
        device_rate = per_epoch / median_seconds(lambda: one_epoch(on_device), repeats)
        row("cached epoch, data.on_device=true", device_rate, "img/s", "indexed in place")
        dm2 = make(workers=2)
        dm2.setup("fit")
        one_epoch(dm2)  # starts the persistent workers
        workers_rate = per_epoch / median_seconds(lambda: one_epoch(dm2), repeats)
        row("cached epoch, num_workers=2", workers_rate, "img/s", "persistent workers")
        cache.clear_memory()
        for case, value, unit, memory_note in memory_rows(Path(tmp) / "jpegs", Path(tmp)):
            row(case, value, unit, memory_note)

    train = training_rate(repeats)
    row("training step consumes", train, "img/s", f"DCGAN {IMAGE_SIZE}px batch {BATCH}, bf16")
    row("cached loader / training step", cached / train, "x", "target >= 10x")
    return rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(f"{r['case']:<38} {r['value']:>12,.1f} {r['unit']:<6} {r['note']}")
