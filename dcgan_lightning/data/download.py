"""Fetching data sets, and the error users see when they are missing: where, and how to get them.

Downloads run only from `prepare_data` (rank 0). Kaggle sets come through `kagglehub`, an optional
extra (`pip install 'dcgan_lightning[kaggle]'`) that also needs Kaggle credentials.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from lightning.pytorch.utilities import rank_zero_only

from dcgan_lightning.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_SECONDS = 5.0

KAGGLE_CREDENTIALS = (
    "set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or put kaggle.json from "
    "https://www.kaggle.com/settings (API, 'Create New Token') in ~/.kaggle/"
)


class MissingDataError(UserError, FileNotFoundError):
    """The data is not where the config says; the message says where it was expected and how to
    get it."""

    def __init__(self, what: str, path: Path, how: str) -> None:
        super().__init__(f"{what} not found at {path.absolute()}.\nHow to get it:\n{how}")
        self.path = path


def kaggle_credentials_present() -> bool:
    """Whether kagglehub would find credentials (environment or files), without a network call."""
    if os.environ.get("KAGGLE_API_TOKEN") or (
        os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")
    ):
        return True
    dirs = [Path(os.environ.get("KAGGLE_CONFIG_DIR", "~/.kaggle")).expanduser()]
    dirs.append(Path("~/.config/kaggle").expanduser())
    return any((d / f).is_file() for d in dirs for f in ("kaggle.json", "access_token"))


def kagglehub_installed() -> bool:
    return importlib.util.find_spec("kagglehub") is not None


def kagglehub_ready() -> bool:
    """kagglehub is installed and has credentials to use."""
    return kagglehub_installed() and kaggle_credentials_present()


def kaggle_instructions(handle: str, competition: bool, dest: Path) -> str:
    """The ways to get a Kaggle set into `dest`: automatically with kagglehub, or by hand."""
    if competition:
        url = f"https://www.kaggle.com/competitions/{handle}"
        cli = f"kaggle competitions download -c {handle} -p {dest}"
        cli += f" && unzip {dest}/{handle}.zip -d {dest}"
        join = f"  (join the competition and accept its rules at {url} first)\n"
    else:
        url = f"https://www.kaggle.com/datasets/{handle}"
        cli = f"kaggle datasets download {handle} -p {dest} --unzip"
        join = ""
    return (
        f"  - automatically: pip install 'dcgan_lightning[kaggle]', {KAGGLE_CREDENTIALS}, "
        f"then rerun with data.download=true\n{join}"
        f"  - by hand: {cli}\n"
        f"  - or download the zip from {url} and unzip it into {dest}"
    )


def fetch_kaggle(kaggle: Mapping[str, object], dest: Path, what: str = "Data") -> None:
    """Download a Kaggle dataset or competition with kagglehub and make it appear at `dest`.

    kagglehub keeps its own cache (~/.cache/kagglehub); `dest` becomes a link to it (a copy where
    links are not allowed), so the data is stored once.
    """
    handle, competition = str(kaggle["handle"]), bool(kaggle.get("competition", False))
    how = kaggle_instructions(handle, competition, dest)
    if not kagglehub_installed():
        raise MissingDataError(what, dest, "kagglehub is not installed.\n" + how)
    if not kaggle_credentials_present():
        raise MissingDataError(what, dest, "no Kaggle credentials found.\n" + how)
    import kagglehub

    log.info("Downloading Kaggle %s %s", "competition" if competition else "dataset", handle)
    try:
        get = kagglehub.competition_download if competition else kagglehub.dataset_download
        source = Path(get(handle))
    except Exception as error:
        raise MissingDataError(what, dest, f"kagglehub failed: {error}\n{how}") from error
    link_or_copy(source, dest)


def link_or_copy(source: Path, dest: Path) -> None:
    """Make `dest` show the contents of `source`, all at once: the ranks waiting for rank 0's
    download read `dest` as soon as it appears. A link where `dest` is absent or an empty folder;
    where links are not allowed, a copy beside it renamed into place; into a partial folder
    already there, a copy into it."""
    if dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
        dest.rmdir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        dest.symlink_to(source.resolve(), target_is_directory=True)
    except OSError:
        if dest.exists():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        else:
            staging = dest.with_name(f".{dest.name}.partial")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging)
            staging.rename(dest)
    log.info("Data ready at %s (from %s)", dest, source)


def wait_for_rank_zero(
    find: Callable[[], T], what: str, path: Path, how: str, timeout_s: float = 3600
) -> T:
    """`find()` once rank 0 has fetched the data: under a launcher that starts every rank at once
    (torchrun, SLURM), the others reach the data before rank 0's download ends. Polls while
    `find` raises `MissingDataError`; after `timeout_s`, raises one saying what to do."""
    deadline, announced = time.monotonic() + timeout_s, False
    while True:
        try:
            return find()
        except MissingDataError:
            if time.monotonic() > deadline:
                raise MissingDataError(
                    what,
                    path,
                    f"rank {rank_zero_only.rank} waited {timeout_s / 60:.0f} min for rank 0 to "
                    "fetch it. On storage each node has its own, fetch it on every node first:\n"
                    + how,
                ) from None
            if not announced:
                log.info("Rank %d: waiting for rank 0 to fetch %s", rank_zero_only.rank, what)
                announced = True
            time.sleep(POLL_SECONDS)
