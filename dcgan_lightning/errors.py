"""The exception types for a user's mistake (bad data path, too little data, a setting that can't
work, a checkpoint that is missing or does not fit), and how the command line reports them: the
message alone and exit status 2 (the shell's "wrong usage", apart from a crash's 1).

Everything else is a bug and keeps its traceback. `HYDRA_FULL_ERROR=1` shows a mistake's
traceback too, as it does for Hydra's own errors. Imports nothing heavy: the command line uses it
before torch is loaded.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

USER_ERROR_STATUS = 2


class UserError(Exception):
    """A mistake in the user's config or data that the message explains how to fix."""


class UserValueError(UserError, ValueError):
    """A setting whose value cannot work (`data.image_size=100`, `model.loss=hing`)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the command line names (a checkpoint) that is not there."""


def user_error(err: BaseException | None) -> UserError | None:
    """The `UserError` behind `err`, if any: Hydra's `instantiate` wraps what a constructor raises
    in an `InstantiationException`."""
    while err is not None and not isinstance(err, UserError):
        err = err.__cause__
    return err


def exit_with_message(err: UserError) -> None:
    """Log the mistake's message alone (console and the run's log) and exit with status 2; with
    HYDRA_FULL_ERROR=1, raise it instead, traceback and all."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    log.error("%s", err)
    sys.exit(USER_ERROR_STATUS)
