"""Any image dataset of the Hugging Face Hub (or a local folder `datasets` reads) as a training set.

`datasets.load_dataset` downloads the set once into the local Hub cache (rank 0, in
`prepare_data`; later runs read the cache, offline too). Its images are then decoded once, as an
image folder's are (`decode.decode_images`: the same resize and crop), into the same
decoded-image cache, keyed by the dataset's own fingerprint (it changes with the data).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dcgan_lightning.data import cache, decode
from dcgan_lightning.data.base import ImageDataModule
from dcgan_lightning.errors import UserError

log = logging.getLogger(__name__)

INSTALL = "pip install 'dcgan_lightning[hub]'"
MAX_VALUES_LISTED = 30  # distinct values named when a filter matches no row


def import_datasets() -> Any:
    """The `datasets` library, or a `UserError` saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            "data=hub reads datasets with the `datasets` library, which is not installed: "
            + INSTALL
        ) from None
    return datasets


def load_split(name: str, split: str) -> Any:
    """`datasets.load_dataset(name, split=split)`: a Hub id (downloaded once, then read from the
    local Hub cache, also offline) or a local folder. Every way it fails for a user's reason
    becomes one `UserError` that says what to do."""
    datasets = import_datasets()
    where = f"data.name={name}"
    try:
        return datasets.load_dataset(name, split=split)
    except datasets.exceptions.DatasetNotFoundError as error:
        raise UserError(
            f"{where}: {error} Check the name (OWNER/DATASET, as on "
            "https://huggingface.co/datasets); a private or gated set needs `hf auth login` first"
        ) from None
    except ConnectionError as error:
        raise UserError(
            f"{where}: cannot reach the Hugging Face Hub ({error}) and the set is not in the local "
            f"Hub cache ({datasets.config.HF_DATASETS_CACHE}). Run once with network access to "
            "download it (later runs work offline, HF_HUB_OFFLINE=1 skips the network), or give "
            "a local folder"
        ) from None
    except FileNotFoundError as error:
        raise UserError(
            f"{where}: {error}. Give OWNER/DATASET of a Hub dataset, or a local folder of "
            "parquet files or of images (class subfolders become labels)"
        ) from None
    except ValueError as error:
        if "split" not in str(error).lower():
            raise
        raise UserError(f"data.split={split} for {where}: {error}") from None


def describe_columns(features: Mapping[str, Any]) -> str:
    """`image (Image), label (ClassLabel: cat, dog, wild)`: what a user can pick from."""

    def one(name: str, feature: Any) -> str:
        kind = type(feature).__name__
        names = getattr(feature, "names", None)
        if names:
            shown = ", ".join(names[:10]) + (f", ... ({len(names)})" if len(names) > 10 else "")
            kind = f"{kind}: {shown}"
        elif kind == "Value":
            kind = feature.dtype
        return f"{name} ({kind})"

    return ", ".join(one(name, feature) for name, feature in features.items())


def check_column(features: Mapping[str, Any], column: str, key: str, name: str) -> None:
    if column not in features:
        raise UserError(
            f"{key}={column}: {name} has no such column; its columns: {describe_columns(features)}"
        )


class _RowImage:
    """One row's encoded image, read from the dataset only when Pillow opens it.

    Pillow copies an object without `seek` into a BytesIO through `read()`, so rows are fetched
    by `decode.decode_images`' threads one at a time: memory holds the images in flight only.
    """

    def __init__(self, table: Any, column: str, row: int) -> None:
        self.table, self.column, self.row = table, column, row

    def __repr__(self) -> str:
        return f"row {self.row}"

    def read(self, size: int = -1) -> bytes:
        cell = self.table[self.row][self.column]  # {"bytes": ..., "path": ...}
        if cell is None:
            raise ValueError(f"row {self.row} has no image")
        if cell.get("bytes") is not None:
            return cell["bytes"]
        return Path(cell["path"]).read_bytes()  # an image folder read in place


# Where an experiment written for an image folder finds its files: `+experiment=monet data=hub`
# keeps the experiment's other settings (size, batch, flips) and these mean nothing here.
FOLDER_SETTINGS = ("root", "folder", "kaggle", "download", "crop")
# Image-folder settings that pick classes: data=hub picks them with `filter`.
FOLDER_CLASSES = {"classes": "data.filter={LABEL_COLUMN: [...]}", "attribute": "data.label_column"}


def drop_folder_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` without an image folder's settings (logged when set); refuses its class pickers."""
    for key, instead in FOLDER_CLASSES.items():
        if kwargs.pop(key, None) is not None:
            raise UserError(f"data.{key} is an image folder's setting: with data=hub use {instead}")
    ignored = [key for key in FOLDER_SETTINGS if kwargs.pop(key, None) is not None]
    if ignored:
        log.info("data=hub ignores the image folder's %s", ", ".join(f"data.{k}" for k in ignored))
    return kwargs


class HubDataModule(ImageDataModule):
    """The images of `split` of the dataset `name`, resized and centre cropped as an image
    folder's; with `labels=True`, each row's `label_column` as its class.

    Args:
        name: a Hub dataset id (OWNER/DATASET) or a local folder `datasets.load_dataset` reads
            (parquet files, or images in class subfolders).
        split: the split to train on (e.g. train).
        image_column: the column of images.
        label_column: with `labels=True`, the column of classes (a ClassLabel's names, or the
            distinct values, sorted).
        filter: keep only the rows whose column holds this value (or one of these values), e.g.
            `{artist: claude-monet}`; ClassLabel columns take names or indices. On the label
            column a list also picks the classes, in that order.
        max_images: use only the first N rows kept.
        cache_dir: where decoded images are kept between runs; None keeps them in memory only.
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        image_column: str = "image",
        label_column: str = "label",
        filter: Mapping[str, Any] | None = None,
        max_images: int | None = None,
        cache_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**drop_folder_settings(kwargs))
        if max_images is not None and max_images <= 0:
            raise ValueError(f"max_images must be positive or null, got {max_images}")
        local = Path(name).expanduser()
        self.name = str(local.resolve()) if local.exists() else name
        self.split, self.image_column, self.label_column = split, image_column, label_column
        self.filter = {str(k): _plain(v) for k, v in (filter or {}).items()}
        self.max_images = max_images
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.skipped: list[str] = []  # unreadable rows, as "row N"
        self._dataset: Any = None
        self._rows: list[int] | None = None  # the rows kept by the filter and max_images
        self._key: cache.CacheKey | None = None
        self._labels: torch.Tensor | None = None
        self._reported = False

    # -- the dataset and its rows ----------------------------------------------------------------
    @property
    def dataset(self) -> Any:
        """The split, loaded once (rank 0 downloads it in `prepare_data`), its columns checked."""
        if self._dataset is None:
            dataset = load_split(self.name, self.split)
            features, what = dataset.features, f"{self.name} ({self.split})"
            check_column(features, self.image_column, "data.image_column", what)
            if type(features[self.image_column]).__name__ != "Image":
                raise UserError(
                    f"data.image_column={self.image_column} holds {features[self.image_column]}, "
                    f"not images; the columns of {what}: {describe_columns(features)}"
                )
            if self.with_labels:
                check_column(features, self.label_column, "data.label_column", what)
            for column in self.filter:
                check_column(features, column, "data.filter", what)
            self._dataset = dataset
        return self._dataset

    def _values(self, column: str) -> list[Any]:
        """A column's values, ClassLabel ones as their names (`None` stays `None`)."""
        values = self.dataset.data.column(column).to_pylist()
        names = getattr(self.dataset.features[column], "names", None)
        if names:
            return [names[v] if v is not None and v >= 0 else None for v in values]
        return values

    def _wanted(self, column: str) -> list[str]:
        """The filter's values for `column`, as the names `_values` gives (indices allowed)."""
        asked = self.filter[column]
        asked = asked if isinstance(asked, list) else [asked]
        names = getattr(self.dataset.features[column], "names", None)
        wanted = []
        for value in asked:
            is_index = isinstance(value, int) and not isinstance(value, bool)
            if names and is_index and 0 <= value < len(names):
                wanted.append(names[value])
            elif names and str(value) not in names:
                raise UserError(
                    f"data.filter: {column}={value!r} is not one of its classes: {', '.join(names)}"
                )
            else:
                wanted.append(str(value))
        return wanted

    @property
    def rows(self) -> list[int]:
        """The rows to train on: those the filter keeps, the first `max_images` of them."""
        if self._rows is None:
            rows = list(range(len(self.dataset)))
            for column in self.filter:
                wanted, values = set(self._wanted(column)), self._values(column)
                kept = [r for r in rows if values[r] is not None and str(values[r]) in wanted]
                if not kept:
                    found = sorted({str(v) for v in values if v is not None})
                    listed = ", ".join(found[:MAX_VALUES_LISTED])
                    more = f", ... ({len(found)} in all)" if len(found) > MAX_VALUES_LISTED else ""
                    raise UserError(
                        f"data.filter: no row of {self.name} ({self.split}) has {column} in "
                        f"{sorted(wanted)}; its values: {listed}{more}"
                    )
                rows = kept
            self._rows = rows[: self.max_images]
        return self._rows

    def list_classes(self) -> list[str]:
        values = self._values(self.label_column)
        present = {str(values[r]) for r in self.rows if values[r] is not None}
        if self.label_column in self.filter:  # the classes asked for, in that order
            return [c for c in dict.fromkeys(self._wanted(self.label_column)) if c in present]
        names = getattr(self.dataset.features[self.label_column], "names", None)
        if names:  # the dataset's order
            return [n for n in names if n in present]
        return sorted(present)

    def _row_labels(self) -> list[int | None]:
        """Each kept row's class index (None: no label, the row is left out)."""
        index = {name: i for i, name in enumerate(self.class_names)}
        values = self._values(self.label_column)
        return [index.get(str(values[r])) if values[r] is not None else None for r in self.rows]

    # -- the decoded-image cache -----------------------------------------------------------------
    def transform(self) -> dict[str, object]:
        """Everything that picks the rows and changes their pixels (and labels): the cache key."""
        transform = {"name": self.name, "split": self.split, "image_column": self.image_column,
                     "filter": self.filter, "max_images": self.max_images,
                     "size": self.image_size, "channels": self.channels,
                     "resample": decode.RESAMPLE.name.lower(), "version": 1}  # fmt: skip
        if self.with_labels:
            transform |= {"label_column": self.label_column, "classes": self.class_names}
        return transform

    @property
    def key(self) -> cache.CacheKey:
        """The set's entry in the decoded-image cache: its content is the dataset's fingerprint,
        which `datasets` derives from the files it read (another revision, another entry)."""
        if self._key is None:
            digest = _digest(self.transform())
            content = _digest([digest, self.dataset._fingerprint])
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.name).name) or "hub"
            self._key = cache.CacheKey(f"hub-{name}", digest[:8], content[:16])
        return self._key

    @property
    def fingerprint(self) -> str:
        key = self.key
        return f"{key.name}-{key.content}-{self.image_size}px-c{self.channels}"

    def prepare_data(self) -> None:
        self.load_images()  # rank 0 downloads and decodes into the disk cache; other ranks read it

    def load_labels(self) -> torch.Tensor:
        if self._labels is None:
            self.load_images()
        return self._labels

    def load_images(self) -> torch.Tensor:
        key, what = self.key, f"{self.name} ({self.split})"
        entry = cache.load(key, self.cache_dir)
        if entry is None:
            entry = self._decode(key, what)
        self.skipped, self._labels = entry.skipped, entry.labels
        if not self._reported:
            decode.report_skipped(entry.skipped, Path(what))
            self._reported = True
        if not len(entry.images):
            raise UserError(f"No readable image in {what}: {len(entry.skipped)} rows unreadable")
        return entry.images

    def _decode(self, key: cache.CacheKey, what: str) -> cache.DecodedImages:
        rows, labels = self.rows, []
        if self.with_labels:  # rows without a class (a missing label) are left out
            pairs = [(r, label) for r, label in zip(rows, self._row_labels()) if label is not None]
            rows, labels = [r for r, _ in pairs], [label for _, label in pairs]
        target = key.path(self.cache_dir) or "memory only (data.cache_dir=null)"
        log.info("Decoding %d images of %s once, cached in %s", len(rows), what, target)
        datasets = import_datasets()
        table = self.dataset.select_columns([self.image_column]).cast_column(
            self.image_column, datasets.Image(decode=False)
        )
        sources = [_RowImage(table, self.image_column, r) for r in rows]
        # decode_images opens each source with Pillow, as it does a file's path.
        images, bad = decode.decode_images(sources, self.image_size, self.channels)  # type: ignore[arg-type]
        unreadable = {source.row for source in bad}
        kept = None
        if self.with_labels:
            readable = [label for r, label in zip(rows, labels) if r not in unreadable]
            kept = torch.tensor(readable, dtype=torch.int64)
        entry = cache.DecodedImages(images, [f"row {r}" for r in sorted(unreadable)], kept)
        if len(images):
            entry = cache.store(key, entry, self.cache_dir)
        return entry


def _plain(value: Any) -> Any:
    """A filter value from the config (a Hydra ListConfig too) as a str, number or list."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return [_plain(v) for v in value]


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
