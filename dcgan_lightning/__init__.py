"""DCGAN experiments with PyTorch Lightning and Hydra."""

from dcgan_lightning.generation import load_generator
from dcgan_lightning.precision import register_resolvers

register_resolvers()  # `${amp_precision:...}` in conf/trainer/

__all__ = ["load_generator"]
