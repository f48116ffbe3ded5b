"""DCGAN experiments with PyTorch Lightning and Hydra.

Importing the package registers the config resolvers (dcgan_lightning.resolvers) and nothing
heavy: `--help` and `--cfg job` compose without torch or Lightning.
`load_generator` is imported (with torch) on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dcgan_lightning.resolvers import register_resolvers

if TYPE_CHECKING:
    from dcgan_lightning.generation import load_generator

register_resolvers()

__all__ = ["load_generator"]


def __getattr__(name: str) -> Any:
    if name == "load_generator":
        from dcgan_lightning.generation import load_generator

        return load_generator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
