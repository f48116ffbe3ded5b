"""From generator output to image files: quantisation, resizing, grids, GIFs, a folder or a zip."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from types import TracebackType

import torch
from PIL import Image, PngImagePlugin

FORMATS = {"png": "PNG", "jpg": "JPEG"}
SAVE_OPTIONS = {"PNG": {}, "JPEG": {"quality": 95, "subsampling": 0}}  # 4:4:4 keeps colour edges
GRID_PAD = 2
GIF_FRAME_MS = 100
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry dates: the same images make the same zip bytes


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> uint8 on the CPU, rounded as torchvision's `save_image` does."""
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).cpu()


def to_pil(images: torch.Tensor, size: int | None = None) -> list[Image.Image]:
    """uint8 (B, C, H, W) with C in {1, 3} -> PIL images, resized to size x size with Lanczos."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 (B, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
    arrays = images.permute(0, 2, 3, 1).numpy()
    pils = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]
    if size is None or size == images.shape[-1]:
        return pils
    return [p.resize((size, size), Image.Resampling.LANCZOS) for p in pils]


def grid(images: list[Image.Image], nrow: int) -> Image.Image:
    """Images in rows of `nrow` on black, `GRID_PAD` px apart and around."""
    side, rows = images[0].width, -(-len(images) // nrow)
    cell = side + GRID_PAD
    canvas = Image.new(images[0].mode, (GRID_PAD + nrow * cell, GRID_PAD + rows * cell))
    for i, image in enumerate(images):
        canvas.paste(image, (GRID_PAD + (i % nrow) * cell, GRID_PAD + (i // nrow) * cell))
    return canvas


def save_gif(frames: list[Image.Image], path: Path, comment: str | None = None) -> None:
    extra = {} if comment is None else {"comment": comment}
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0, **extra
    )


def encode(image: Image.Image, fmt: str, comment: str | None = None) -> bytes:
    """The image file's bytes; `comment` goes into it (PNG text chunk `comment`, JPEG comment)."""
    options = dict(SAVE_OPTIONS[FORMATS[fmt]])
    if comment is not None and fmt == "png":
        options["pnginfo"] = PngImagePlugin.PngInfo()
        options["pnginfo"].add_text("comment", comment)
    elif comment is not None:
        options["comment"] = comment
    buffer = io.BytesIO()
    image.save(buffer, format=FORMATS[fmt], **options)
    return buffer.getvalue()


class ImageWriter:
    """Writes named images into a folder, or into a zip (Kaggle's submission layout).

    A zip is written beside its destination and moved into place on success, so an interrupted
    run leaves no half zip behind. `comment` becomes the zip's archive comment (not a file in it).
    """

    def __init__(self, dest: Path, fmt: str, as_zip: bool, comment: str | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
        self.dest, self.fmt = Path(dest), fmt
        self._zip: zipfile.ZipFile | None = None
        self._partial = self.dest.with_name(self.dest.name + ".partial")
        if as_zip:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self._zip = zipfile.ZipFile(self._partial, "w", zipfile.ZIP_STORED)  # JPEG: no gain
            self._zip.comment = (comment or "").encode()
        else:
            self.dest.mkdir(parents=True, exist_ok=True)

    def add(self, stem: str, image: Image.Image) -> None:
        name, data = f"{stem}.{self.fmt}", encode(image, self.fmt)
        if self._zip is None:
            (self.dest / name).write_bytes(data)
        else:
            self._zip.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE), data)

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._zip is None:
            return
        self._zip.close()
        if exc_type is None:
            os.replace(self._partial, self.dest)
        else:
            self._partial.unlink(missing_ok=True)
