"""Finding image files and decoding them, once, into same-size uint8 arrays.

Every failure of one file (corrupt, truncated, unknown format, unsupported mode) is caught and the
file is reported as skipped: a bad image costs a log line, never a run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
RESAMPLE = Image.Resampling.LANCZOS
MAX_LISTED = 50  # file names written to the log per report


def list_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively, sorted by path. Hidden files and folders (`.cache`,
    macOS `._*` resource forks) are not images and are left out. Follows links, once per folder."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link loop
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(folder, f)
            for f in sorted(files)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found)


def _flatten(image: Image.Image) -> Image.Image:
    """An 8-bit L or RGB image: transparency composited on white, 16-bit scaled down."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.max(initial=0) > 255:
            pixels = pixels / 257.0
        return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image


def decode_image(path: Path, size: int, channels: int, crop: int | None = None) -> np.ndarray:
    """One file as uint8 (size, size, channels): short side resized to `size`, centre cropped.

    With `crop`, the centre `crop` x `crop` square (in original pixels) is what gets resized, as
    for aligned CelebA faces. JPEGs are decoded directly at a reduced scale (libjpeg's DCT
    scaling) when the result is still at least `size`: much faster for large paintings.
    Raises on any unreadable file.
    """
    mode = "L" if channels == 1 else "RGB"
    with Image.open(path) as image:
        short = min(image.size)
        side = min(crop, short) if crop else short
        image.draft(mode, tuple(math.ceil(s * size / side) for s in image.size))
        image.load()
        scale = min(image.size) / short  # < 1 when drafted
        image = _flatten(ImageOps.exif_transpose(image))
        if image.mode != mode:
            image = image.convert(mode)
        width, height = image.size
        side = min(crop * scale, width, height) if crop else min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        image = image.resize((size, size), RESAMPLE, box=(left, top, left + side, top + side))
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def _try_decode(path: Path, size: int, channels: int, crop: int | None) -> np.ndarray | None:
    try:
        return decode_image(path, size, channels, crop)
    except Exception as error:  # any failure of one file: skip it, never end the run
        log.debug("Cannot read %s: %s", path, error)
        return None


def decode_images(
    files: Sequence[Path], size: int, channels: int, crop: int | None = None
) -> tuple[torch.Tensor, list[Path]]:
    """Decode `files` in threads (Pillow releases the GIL while decoding and resizing).

    Each thread writes its image's row of one preallocated (N, channels, size, size) uint8 tensor,
    so the peak is the decoded set plus a few images in flight. Returns the readable images in
    file order (unreadable files' rows compacted out in place: the result may be a view of a
    slightly larger buffer) and the files that could not be read. Logs progress every ~10%.
    """
    out = torch.empty(len(files), channels, size, size, dtype=torch.uint8)

    def decode_row(i: int) -> bool:
        pixels = _try_decode(files[i], size, channels, crop)
        if pixels is not None:
            out[i].numpy()[...] = pixels.transpose(2, 0, 1)  # Pillow's array is read-only
        return pixels is not None

    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    progress = _Progress(len(files))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        readable = [progress.step(ok) for ok in pool.map(decode_row, range(len(files)))]
    kept = 0
    for i, ok in enumerate(readable):
        if ok:
            if i != kept:  # rows only move down: in place, no second buffer
                out[kept] = out[i]
            kept += 1
    skipped = [f for f, ok in zip(files, readable, strict=True) if not ok]
    return (out if kept == len(files) else out[:kept]), skipped


class _Progress:
    """A log line at every tenth of a long decode (200k JPEGs take minutes), with time left."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.monotonic()
        self.next_report = 1

    def step(self, ok: bool) -> bool:
        self.done += 1
        if self.done * 10 >= self.next_report * self.total:
            self.next_report = self.done * 10 // self.total + 1
            elapsed = time.monotonic() - self.start
            left = elapsed / self.done * (self.total - self.done)
            log.info("Decoded %d/%d images (%d%%), %.0f s, ~%.0f s left", self.done, self.total,
                     100 * self.done // self.total, elapsed, left)  # fmt: skip
        return ok


def report_skipped(skipped: Sequence[str], folder: Path) -> None:
    """One warning naming the unreadable files (the first `MAX_LISTED` of them)."""
    if not skipped:
        return
    names = ", ".join(skipped[:MAX_LISTED])
    more = f" and {len(skipped) - MAX_LISTED} more" if len(skipped) > MAX_LISTED else ""
    log.warning(
        "Skipped %d unreadable image file(s) in %s: %s%s", len(skipped), folder, names, more
    )
