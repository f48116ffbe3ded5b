"""Inception v3 for FID/KID, its weights found offline when possible: hub cache, path, download."""

from __future__ import annotations

import hashlib
import logging
import socket
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    FeatureExtractorInceptionV3,
)
from torchmetrics.image.fid import NoTrainInceptionV3

log = logging.getLogger(__name__)

WEIGHTS_NAME = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
NUM_FEATURES = 2048
DOWNLOAD_TIMEOUT_S = 60


def hub_weights_path() -> Path:
    """Where torch-fidelity and torchmetrics look first: `$TORCH_HOME/hub/checkpoints/`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def how_to_supply() -> str:
    """The user-facing instructions for machines without internet."""
    return (
        f"Download {URL_INCEPTION_V3} on a machine with internet, then copy it to "
        f"{hub_weights_path()} or pass "
        f"metrics.feature_extractor_weights_path=/path/to/{WEIGHTS_NAME}"
    )


def resolve_weights(configured: str | None, download: bool) -> tuple[Path | None, str]:
    """The weights file to use and, when there is none, why: hub cache, `configured`, download."""
    hub = hub_weights_path()
    if hub.is_file():
        return hub, ""
    tried = [f"not in the torch hub cache ({hub})"]
    if configured:
        if Path(configured).is_file():
            return Path(configured), ""
        tried.append(f"feature_extractor_weights_path={configured} does not exist")
    if not download:
        tried.append("download disabled (metrics.download=false)")
        return None, "; ".join(tried)
    try:
        hub.parent.mkdir(parents=True, exist_ok=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urlopen in torch.hub takes no timeout
        try:
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(hub), progress=False)
        finally:
            socket.setdefaulttimeout(previous)
        return hub, ""
    except Exception as err:  # any network or disk failure means "no weights"
        tried.append(f"download failed ({type(err).__name__}: {err})")
        return None, "; ".join(tried)


def weights_id(path: Path) -> str:
    """A short content hash: caches of real features made with other weights never match."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def load_inception(weights_path: Path, antialias: bool = False) -> nn.Module:
    """FID's Inception v3, uint8 (N, 3, H, W) -> (N, 2048) pool features, always in eval mode.

    `antialias=False` resizes to 299 px like TensorFlow 1.x: FIDs comparable with torch-fidelity and
    published numbers. torchmetrics defaults to True since 1.8, which shifts every FID.
    """
    return NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=[str(NUM_FEATURES)],
        feature_extractor_weights_path=str(weights_path),
        antialias=antialias,
    )


class _Unloaded(FeatureExtractorInceptionV3):
    def load_state_dict(self, *args, **kwargs) -> None:  # keep the random initialisation
        return None


def save_random_inception_weights(path: Path) -> Path:
    """A weights file with Inception's exact keys and shapes and random values.

    For offline tests and benchmarks: the architecture and cost of the real FID path, no download.
    """
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        net = _Unloaded("inception-v3-compat", [str(NUM_FEATURES)], str(empty))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path
