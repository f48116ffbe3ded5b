"""Any folder of images as a training set, decoded once through the decoded-image cache."""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only

from dcgan_lightning.data import cache, decode
from dcgan_lightning.data.base import ImageDataModule
from dcgan_lightning.data.download import (
    MissingDataError,
    fetch_kaggle,
    kaggle_instructions,
    wait_for_rank_zero,
)
from dcgan_lightning.errors import UserError

log = logging.getLogger(__name__)


def class_dir(image_dir: Path) -> Path:
    """The folder whose subfolders are the classes: `image_dir`, or the single subfolder it holds
    (at any depth) when it holds nothing else, as Best Artworks' `images/images/<Artist>/`."""
    while True:
        entries = [e for e in os.scandir(image_dir) if not e.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            return image_dir
        image_dir = Path(entries[0].path)


def find_folder(root: Path, name: str) -> Path | None:
    """The shallowest folder called `name` under `root` (root included), breadth first: Kaggle
    zips nest folders differently from one download tool to another."""
    queue = deque([root])
    while queue:
        folder = queue.popleft()
        if folder.name == name:
            return folder
        try:
            children = sorted(e.path for e in os.scandir(folder) if e.is_dir())
        except OSError:
            continue
        queue.extend(Path(c) for c in children if not Path(c).name.startswith("."))
    return None


class ImageFolderDataModule(ImageDataModule):
    """Every image under `root` (recursively: jpg, jpeg, png, webp, bmp) as RGB (or L for one
    channel), the short side resized to `image_size` and centre cropped.

    Args:
        root: the folder, or the folder that holds `folder` at any depth.
        folder: the name of the image folder inside `root` (e.g. a Kaggle zip's `monet_jpg`).
        crop: centre crop this many original pixels before resizing (aligned faces: 178).
        max_images: use only the first N files (sorted by path), e.g. for a quick try.
        cache_dir: where decoded images are kept between runs; None keeps them in memory only.
        download: fetch missing data in `prepare_data` when a source is known (`kaggle`).
        kaggle: {handle, competition} of the Kaggle dataset or competition that holds `root`.
        classes: with `labels=True`, the class folders to keep (default: every one), in index
            order. The classes are the image folder's first-level subfolders, by name.
    """

    what = "Image folder"

    def __init__(
        self,
        root: str | Path,
        folder: str | None = None,
        crop: int | None = None,
        max_images: int | None = None,
        cache_dir: str | Path | None = None,
        download: bool = True,
        kaggle: Mapping[str, object] | None = None,
        classes: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if classes is not None and not self.with_labels:
            raise UserError("data.classes picks class folders: set data.labels=true too")
        if crop is not None and crop <= 0:
            raise ValueError(f"crop must be positive or null, got {crop}")
        if max_images is not None and max_images <= 0:
            raise ValueError(f"max_images must be positive or null, got {max_images}")
        self.root, self.folder, self.crop, self.max_images = Path(root), folder, crop, max_images
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.download = download
        self.kaggle = dict(kaggle) if kaggle else None
        self.skipped: list[str] = []  # unreadable files, relative to the image folder
        self.classes = list(classes) if classes is not None else None
        self._key: cache.CacheKey | None = None
        self._reported = False
        self._labels: torch.Tensor | None = None

    # -- what subclasses adapt -----------------------------------------------------------------
    def how_to_get(self) -> str:
        """Instructions for the missing-data error."""
        if self.kaggle:
            handle, competition = str(self.kaggle["handle"]), bool(self.kaggle.get("competition"))
            return kaggle_instructions(handle, competition, self.root)
        exts = ", ".join(e.lstrip(".") for e in decode.IMAGE_EXTENSIONS)
        return f"  - put image files ({exts}) in {self.root} or point data.root at your folder"

    def fetch(self) -> None:
        """Download the data (rank 0, from `prepare_data`); raise `MissingDataError` if we can't."""
        if self.kaggle:
            fetch_kaggle(self.kaggle, self.root, self.what)

    def image_dir(self) -> Path:
        """The folder whose images are used; raises `MissingDataError` naming where to put them."""
        if not self.root.is_dir():
            raise MissingDataError(self.what, self.root, self.how_to_get())
        if self.folder is None:
            return self.root
        found = find_folder(self.root, self.folder)
        if found is None:
            raise MissingDataError(f"Folder {self.folder!r}", self.root, self.how_to_get())
        return found

    def image_files(self, image_dir: Path) -> list[Path]:
        """The candidate files, in a fixed order."""
        return decode.list_images(image_dir)

    def crop_for(self, image_dir: Path) -> int | None:
        """The centre crop (original pixels) for the images of `image_dir`."""
        return self.crop

    def list_classes(self) -> list[str]:
        # Asked for when the model is built, on every rank, before `prepare_data`: rank 0 fetches
        # the data first; ranks started with it (torchrun, SLURM) wait for its download.
        if self.download and self.kaggle and rank_zero_only.rank == 0:
            try:
                self.image_dir()
            except MissingDataError:
                self.fetch()
        elif self.download and self.kaggle:
            wait_for_rank_zero(self.image_dir, self.what, self.root, self.how_to_get())
        folder = class_dir(self.image_dir())
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and e.name[0] != ".")
        if self.classes is None:
            if not found:
                raise UserError(f"data.labels=true: {folder} has no subfolders to use as classes")
            return found
        unknown = [c for c in self.classes if c not in found]
        if unknown:
            raise UserError(f"data.classes: no folder {unknown} in {folder}; there are: {found}")
        return self.classes

    def label_files(self, image_dir: Path, files: list[Path]) -> tuple[list[Path], list[int]]:
        """The files of the classes, and each one's class index: its first-level class folder."""
        folder, index = class_dir(image_dir), {c: i for i, c in enumerate(self.class_names)}
        kept = [(f, index.get(f.relative_to(folder).parts[0])) for f in files]
        kept = [(f, label) for f, label in kept if label is not None]
        return [f for f, _ in kept], [label for _, label in kept]

    # -- loading -------------------------------------------------------------------------------
    def transform(self, image_dir: Path) -> dict[str, object]:
        """Everything that changes the decoded pixels (and the labels asked for): the cache key."""
        resample = decode.RESAMPLE.name.lower()
        crop = self.crop_for(image_dir)
        transform = {"size": self.image_size, "channels": self.channels, "crop": crop,
                     "resample": resample, "version": 1}  # fmt: skip
        return transform | ({"classes": self.class_names} if self.with_labels else {})

    def _files(self) -> tuple[Path, list[Path], list[int]]:
        image_dir = self.image_dir()
        files, labels = self.image_files(image_dir), []
        if self.with_labels:
            files, labels = self.label_files(image_dir, files)
        files, labels = files[: self.max_images], labels[: self.max_images]
        self._key = cache.CacheKey.of(image_dir, files, self.transform(image_dir))
        return image_dir, files, labels

    @property
    def fingerprint(self) -> str:
        if self._key is None:
            self._files()
        return f"{self._key.name}-{self._key.content}-{self.image_size}px-c{self.channels}"

    def prepare_data(self) -> None:
        if self.download:
            try:
                self.image_dir()
            except MissingDataError:
                self.fetch()
        self.load_images()  # rank 0 decodes and writes the disk cache; other ranks read it

    def load_labels(self) -> torch.Tensor:
        if self._labels is None:
            self.load_images()
        return self._labels

    def load_images(self) -> torch.Tensor:
        image_dir, files, labels = self._files()
        entry = cache.load(self._key, self.cache_dir)
        if entry is None:
            target = self._key.path(self.cache_dir) or "memory only (data.cache_dir=null)"
            log.info("Decoding %d images from %s once, cached in %s", len(files), image_dir, target)
            crop = self.crop_for(image_dir)
            images, bad = decode.decode_images(files, self.image_size, self.channels, crop)
            skipped = [p.relative_to(image_dir).as_posix() for p in bad]
            kept = None
            if self.with_labels:  # the labels of the readable files, in their order
                unreadable = set(bad)
                readable = [label for f, label in zip(files, labels) if f not in unreadable]
                kept = torch.tensor(readable, dtype=torch.int64)
            entry = cache.DecodedImages(images, skipped, kept)
            if len(images):
                entry = cache.store(self._key, entry, self.cache_dir)
                del images  # the stored entry maps the cache file: the decoded buffer goes
        self.skipped, self._labels = entry.skipped, entry.labels
        if not self._reported:
            decode.report_skipped(entry.skipped, image_dir)
            self._reported = True
        if not len(entry.images):
            exts = ", ".join(decode.IMAGE_EXTENSIONS)
            raise ValueError(
                f"No readable image in {image_dir}: {len(files)} file(s) named {exts} found "
                f"(searched recursively), {len(entry.skipped)} of them unreadable"
            )
        return entry.images
