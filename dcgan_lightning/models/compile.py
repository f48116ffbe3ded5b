"""`model.compile`: which `torch.compile` mode G and D run in, refused early where it can't work.

`false` (eager), `true` or `default`, `reduce-overhead` (CUDA graphs: the fewest kernel launches,
for small nets and batches), `max-autotune` (searches kernels: minutes of compiling, the fastest
large convs). Each net is compiled in place (`nn.Module.compile`), so DDP wrappers, EMA and
checkpoints see the same modules and plain state-dict keys.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune")


def compile_mode(value: bool | str | None) -> str | None:
    """The `torch.compile` mode `model.compile` asks for; None for eager."""
    if value is None or value is False or value == "false":
        return None
    if value is True or value == "true":
        return "default"
    if value in MODES:
        return value
    raise ValueError(
        f"model.compile must be false, true or one of {', '.join(MODES)}; got {value!r}"
    )


def check_compile(mode: str | None, device_type: str) -> None:
    """Refuse what cannot work before any training: CUDA graphs need a CUDA device."""
    if mode == "reduce-overhead" and device_type != "cuda":
        raise ValueError(
            f"model.compile=reduce-overhead captures CUDA graphs and needs a CUDA device; this run "
            f"trains on {device_type!r}: use model.compile=default (or false) there"
        )


def compile_nets(
    generator: nn.Module, discriminator: nn.Module, mode: bool | str | None, device_type: str
) -> None:
    """Compile G and D in place in `mode` (see `compile_mode`), after `check_compile`.

    Recompilations (a new batch size, eval mode for sample grids) are bounded by dynamo's
    recompile limit (8), past which a net runs eagerly; `TORCH_LOGS=recompiles` logs each one
    with its reason.
    """
    mode = compile_mode(mode)
    check_compile(mode, device_type)
    if mode is None:
        return
    for net in (generator, discriminator):
        net.compile(mode=mode)
    log.info("G and D compiled with torch.compile(mode=%r)", mode)


def mark_step_begin(mode: bool | str | None) -> None:
    """Call at the start of every training step: under CUDA graphs it tells torch the previous
    step's outputs are no longer read, so their memory can be reused without an error."""
    if compile_mode(mode) == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()
