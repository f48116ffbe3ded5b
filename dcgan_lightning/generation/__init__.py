"""Sampling from trained generators: loading checkpoints, latent walks, writing image files."""

from dcgan_lightning.generation.loading import CheckpointError, TrainedGenerator, load_generator

__all__ = ["CheckpointError", "TrainedGenerator", "load_generator"]
