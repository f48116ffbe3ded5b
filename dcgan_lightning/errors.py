"""The one exception type for a user's mistake (bad data path, too little data, a setting that
can't work): `python -m dcgan_lightning` prints its message alone and exits with status 2.

Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's config or data that the message explains how to fix."""
