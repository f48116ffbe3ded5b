"""Every OmegaConf resolver the configs call, registered without importing torch or Lightning (a
resolver imports them when it is resolved, on the machine that trains)."""

from __future__ import annotations

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """Register `amp_precision` (conf/trainer/), `dcgan_run_dir`, `dcgan_hydra_subdir`
    (conf/hydra/) and `dcgan_help` (the `--help` pages); idempotent."""
    from dcgan_lightning.cli import help_section
    from dcgan_lightning.precision import amp_precision
    from dcgan_lightning.resume import hydra_subdir, run_dir

    resolvers = {
        "amp_precision": amp_precision,
        "dcgan_run_dir": run_dir,
        "dcgan_hydra_subdir": hydra_subdir,
        "dcgan_help": help_section,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
