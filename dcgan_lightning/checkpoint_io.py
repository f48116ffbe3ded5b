"""Checkpoint writes that a crash or a full disk cannot corrupt, and an early check that outputs can
be written at all.

Lightning's own save goes through fsspec, whose local "transaction" writes into the system temp
directory and then `shutil.move`s the file: a copy when that is another filesystem, so a SIGKILL can
leave a truncated `last.ckpt`; nothing is fsynced. Here the file is written next to its target,
fsynced, then renamed over it: readers see the old checkpoint or the new one, never a torn one.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from dcgan_lightning.errors import UserError


class UnwritableOutputError(UserError, PermissionError):
    """The run's output directory cannot be written: reported before any data is loaded."""


class InsufficientDiskSpaceError(OSError):
    """Raised instead of writing a checkpoint that does not fit; the previous one is kept."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def ensure_writable(directory: str | os.PathLike) -> None:
    """Create `directory` and write a probe file into it: an unusable output directory is reported
    before any data is loaded or any step is trained."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UnwritableOutputError(
            f"Output directory {path} is not writable ({err.strerror or err}). Fix its "
            "permissions or write elsewhere, e.g. hydra.run.dir=/path/with/space"
        ) from err


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(data: bytes, path: Path) -> None:
    """Write `data` to `path` via a temporary file in the same directory, fsync and rename."""
    free = shutil.disk_usage(path.parent).free
    if free < len(data):
        raise InsufficientDiskSpaceError(
            errno.ENOSPC,
            f"Not enough disk space to save checkpoint {path}: it needs {_mib(len(data))}, "
            f"{_mib(free)} is free on {path.parent}. The previous checkpoint is kept; free some "
            "space and resume with ckpt_path=last",
        )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise InsufficientDiskSpaceError(
                errno.ENOSPC,
                f"Disk full while saving checkpoint {path}; the previous checkpoint is kept. "
                "Free some space and resume with ckpt_path=last",
            ) from err
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with crash-safe local writes (see the module docstring). Remote paths
    (s3://, gs://, ...) and `storage_options` keep Lightning's own behaviour."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        remote = "://" in str(path) and not str(path).startswith("file://")
        if remote or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(str(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(buffer.getvalue(), target)
