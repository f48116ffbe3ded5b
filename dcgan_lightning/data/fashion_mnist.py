"""Fashion-MNIST: 28x28 grayscale clothes, read from the raw IDX files and resized to the model."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dcgan_lightning.data.base import ImageDataModule
from dcgan_lightning.data.download import MissingDataError

log = logging.getLogger(__name__)

IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
RESIZE_CHUNK = 4096  # images resized at a time: bounds the float32 working memory


def _read(path: Path) -> bytes:
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        return f.read()


def read_idx_labels(path: Path) -> np.ndarray:
    """A uint8 IDX1 label file (gzipped or not) as (N,)."""
    data = _read(path)
    if len(data) < 8 or data[:4] != b"\x00\x00\x08\x01":
        raise ValueError(f"{path} is not an IDX file of uint8 labels (bad header)")
    n = int.from_bytes(data[4:8], "big")
    if len(data) != 8 + n:
        raise ValueError(f"{path}: {len(data) - 8} labels, expected {n}")
    return np.frombuffer(data, np.uint8, offset=8)


def read_idx_images(path: Path) -> np.ndarray:
    """A uint8 IDX file (gzipped or not) as (N, H, W)."""
    data = _read(path)
    if len(data) < 16 or data[:3] != b"\x00\x00\x08" or data[3] != 3:
        raise ValueError(f"{path} is not an IDX file of uint8 images (bad header)")
    n, h, w = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    if len(data) != 16 + n * h * w:
        raise ValueError(f"{path}: {len(data) - 16} bytes of pixels, expected {n}x{h}x{w}")
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) to (N, C, size, size), bilinear with antialiasing, in chunks."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty(*images.shape[:2], size, size, dtype=torch.uint8)
    for i in range(0, len(images), RESIZE_CHUNK):
        chunk = images[i : i + RESIZE_CHUNK].float()
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True)
        out[i : i + RESIZE_CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


class FashionMNISTDataModule(ImageDataModule):
    """The `split` images (train 60,000, test 10,000, or all), 1 channel (or repeated to 3);
    with `labels=True` also their classes, from the matching `*-labels-idx1-ubyte` files.

    Files are looked for where torchvision puts them (`root/FashionMNIST/raw/`), then in
    `root/FashionMNIST/` and `root/`, uncompressed or `.gz`. `prepare_data` downloads them with
    torchvision when `download` is on and they are missing.
    """

    what = "Fashion-MNIST"

    def __init__(
        self, root: str | Path, split: str = "train", download: bool = True, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if split not in (*IMAGE_FILES, "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        self.root, self.split, self.download = Path(root), split, download

    @property
    def fingerprint(self) -> str:
        return f"fashion_mnist-{self.split}-{self.image_size}px-c{self.channels}"

    def _splits(self) -> list[str]:
        return list(IMAGE_FILES) if self.split == "all" else [self.split]

    def list_classes(self) -> list[str]:
        return list(CLASSES)

    def _needed(self) -> list[str]:
        """The file names this split (and labels setting) reads."""
        files = [IMAGE_FILES[s] for s in self._splits()]
        return files + ([LABEL_FILES[s] for s in self._splits()] if self.with_labels else [])

    def _find(self, name: str) -> Path | None:
        for folder in (self.root / "FashionMNIST" / "raw", self.root / "FashionMNIST", self.root):
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        return None

    def how_to_get(self) -> str:
        raw = self.root / "FashionMNIST" / "raw"
        files = " ".join(f"{name}.gz" for name in self._needed())
        return (
            f"  - automatically: rerun with data.download=true (torchvision downloads it)\n"
            f'  - or: python -c "from torchvision.datasets import FashionMNIST; '
            f"FashionMNIST('{self.root}', download=True)\"\n"
            f"  - or by hand: mkdir -p {raw} && cd {raw} && "
            f"for f in {files}; do curl -O {MIRROR}/$f; done"
        )

    def prepare_data(self) -> None:
        if not self.download or all(self._find(name) for name in self._needed()):
            return
        from torchvision.datasets import FashionMNIST

        try:  # fetches both splits into root/FashionMNIST/raw
            FashionMNIST(str(self.root), download=True)
        except Exception as error:  # offline, mirror down, ...
            raise MissingDataError(
                self.what,
                self.root,
                f"torchvision's download failed ({error}).\n{self.how_to_get()}",
            ) from error

    def _path(self, name: str, what: str) -> Path:
        path = self._find(name)
        if path is None:
            raise MissingDataError(
                f"{self.what} {what} ({name}[.gz])",
                self.root / "FashionMNIST" / "raw",
                self.how_to_get(),
            )
        return path

    def load_labels(self) -> torch.Tensor:
        paths = [self._path(LABEL_FILES[s], f"{s} labels") for s in self._splits()]
        arrays = [read_idx_labels(path) for path in paths]
        return torch.from_numpy(np.concatenate(arrays).astype(np.int64))

    def load_images(self) -> torch.Tensor:
        paths = [self._path(IMAGE_FILES[s], f"{s} images") for s in self._splits()]
        arrays = [read_idx_images(path) for path in paths]
        images = torch.from_numpy(np.concatenate(arrays)).unsqueeze(1)
        images = resize(images, self.image_size)
        return images.expand(-1, self.channels, -1, -1).contiguous()
