"""The decoded-image cache: each image is decoded and resized once, then served as a uint8 tensor.

Entries live in memory (the last few, for later runs in the same process, e.g. a sweep) and on
disk (for later processes). The key hashes the file list with each file's size and mtime and the
transform, so adding, removing or changing a file, or asking for another size, misses the cache.

A disk entry is read memory-mapped (`torch.load(mmap=True)`, copy-on-write): every DDP rank of a
machine, and the process that decoded it, share the page cache's one copy of the images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedImages:
    """Decoded images (N, C, H, W) uint8, and the unreadable files (relative to the folder)."""

    images: torch.Tensor
    skipped: list[str]


MEMORY_ENTRIES = 2
_memory: OrderedDict[str, DecodedImages] = OrderedDict()


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Names one decoded set: `group` is the file list (paths) and transform, `content` adds each
    file's size and mtime. Entries of one group differ only in content: the older are stale. A
    subset (`max_images`, another CelebA split) is another group and keeps its own entry."""

    name: str
    group: str
    content: str

    @classmethod
    def of(cls, root: Path, files: Sequence[Path], transform: Mapping[str, object]) -> CacheKey:
        listing = []
        for path in files:
            stat = path.stat()
            listing.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name) or "images"
        group = _digest([str(root.resolve()), [p for p, _, _ in listing], dict(transform)])[:8]
        return cls(name, group, _digest([group, listing])[:16])

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.group}-{self.content}.pt"

    def path(self, cache_dir: Path | None) -> Path | None:
        """Where this entry is (or will be) on disk; None when not cached on disk."""
        return cache_dir / self.filename if cache_dir is not None else None


def _read(path: Path) -> DecodedImages:
    stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return DecodedImages(stored["images"], list(stored["skipped"]))


def load(key: CacheKey, cache_dir: Path | None) -> DecodedImages | None:
    """The cached entry for `key`, from memory or else disk; None on a miss."""
    if key.filename in _memory:
        _memory.move_to_end(key.filename)
        return _memory[key.filename]
    if cache_dir is None or not (cache_dir / key.filename).is_file():
        return None
    path = cache_dir / key.filename
    try:
        entry = _read(path)
    except Exception as error:  # a damaged cache file is a miss, not a failure
        log.warning("Ignoring unreadable cache file %s: %s", path, error)
        return None
    log.info("Loaded %d decoded images from %s", len(entry.images), path)
    _remember(key, entry)
    return entry


def store(key: CacheKey, entry: DecodedImages, cache_dir: Path | None) -> DecodedImages:
    """Write `entry` atomically to `cache_dir` (when set), replacing stale entries of the same
    files and transform, and keep it in memory. Returns the entry to use: the written file,
    memory-mapped, so the decoded buffer can be freed; `entry` itself if not written."""
    if cache_dir is None:
        _remember(key, entry)
        return entry
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".pt")
        with os.fdopen(fd, "wb") as f:
            torch.save({"images": entry.images, "skipped": entry.skipped}, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared data dir serves every user
        os.replace(tmp, cache_dir / key.filename)
    except (OSError, RuntimeError) as error:  # read-only data dir, full disk: train, uncached
        log.warning("Cannot write the image cache in %s: %s", cache_dir, error)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        _remember(key, entry)
        return entry
    for stale in cache_dir.glob(f"{key.name}-{key.group}-*.pt"):
        if stale.name != key.filename:
            stale.unlink(missing_ok=True)
    log.info("Cached decoded images in %s", cache_dir / key.filename)
    entry = _read(cache_dir / key.filename)
    _remember(key, entry)
    return entry


def _remember(key: CacheKey, entry: DecodedImages) -> None:
    _memory[key.filename] = entry
    _memory.move_to_end(key.filename)
    while len(_memory) > MEMORY_ENTRIES:
        _memory.popitem(last=False)


def clear_memory() -> None:
    """Forget the in-memory entries (as a new process would)."""
    _memory.clear()
