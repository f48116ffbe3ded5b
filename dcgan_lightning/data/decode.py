"""Finding image files and decoding them, once, into same-size uint8 arrays.

Every failure of one file (corrupt, truncated, unknown format, unsupported mode) is caught and the
file is reported as skipped: a bad image costs a log line, never a run.
"""

from __future__ import annotations

import logging
import math
import os
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

    Returns the readable images as uint8 (N, channels, size, size), in file order, and the files
    that could not be read.
    """
    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        arrays = list(pool.map(lambda f: _try_decode(f, size, channels, crop), files))
    good = [a for a in arrays if a is not None]
    skipped = [f for f, a in zip(files, arrays, strict=True) if a is None]
    images = torch.from_numpy(np.stack(good)) if good else torch.empty(0, size, size, channels)
    return images.to(torch.uint8).permute(0, 3, 1, 2).contiguous(), skipped


def report_skipped(skipped: Sequence[str], folder: Path) -> None:
    """One warning naming the unreadable files (the first `MAX_LISTED` of them)."""
    if not skipped:
        return
    names = ", ".join(skipped[:MAX_LISTED])
    more = f" and {len(skipped) - MAX_LISTED} more" if len(skipped) > MAX_LISTED else ""
    log.warning(
        "Skipped %d unreadable image file(s) in %s: %s%s", len(skipped), folder, names, more
    )
