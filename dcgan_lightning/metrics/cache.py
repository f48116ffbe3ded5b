"""On-disk cache of real-image features: the runs of a sweep, and later runs, skip the real pass."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

VERSION = 1  # bump when what a key describes changes meaning


def cache_key(**settings: Any) -> str:
    """A stable hash of everything the real features depend on (data, size, count, extractor)."""
    text = json.dumps({"version": VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"real_features_{key}.pt"


def load_features(path: Path) -> torch.Tensor | None:
    """The cached (N, D) features, or None when there is no (readable) cache file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["features"]
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError):
        return None


def save_features(path: Path, features: torch.Tensor, settings: dict[str, Any]) -> None:
    """Write atomically: parallel sweep jobs never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"features": features.cpu(), "settings": json.dumps(settings)}, tmp)
    os.replace(tmp, path)
