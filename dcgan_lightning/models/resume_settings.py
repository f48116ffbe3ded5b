"""A resumed fit trains with the command line's settings and names those that differ from the
checkpoint's.

Lightning builds the optimizers from the command line, then loads the checkpoint's `param_groups`
over them: a resume with a new `model.optimizer_g.lr` would train on at the old rate. The
optimizer's `defaults` still hold what the command line asked for, so `apply_optimizer_settings`
puts its numeric settings (lr, betas, eps, weight decay, ...) back into every group. The model's
own settings (loss, DiffAugment, label smoothing, D steps per G step, EMA, ADA, ...) come from the
command line already, as the model is built from it; `changed_settings` names those that differ
from the checkpoint's, since the restored weights and optimizer moments were trained under the old
ones. Both are applied, and each change is logged, never refused: fine-tuning a checkpoint with
another rate or loss is a legitimate thing to ask for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from numbers import Real
from typing import Any

from omegaconf import Container, OmegaConf
from torch.optim import Optimizer

log = logging.getLogger(__name__)


def apply_optimizer_settings(optimizers: Mapping[str, Optimizer]) -> list[str]:
    """Give each optimizer's param groups its constructor's numeric settings again (after a
    checkpoint's were loaded over them); returns the changes, e.g. `optimizer_g lr 0.0002 ->
    1e-05`. Flags (amsgrad, fused, ...) are left as restored: the state they need may be missing."""
    changes = []
    for name, optimizer in optimizers.items():
        for key, wanted in optimizer.defaults.items():
            if not _is_number_setting(wanted):
                continue
            wanted = tuple(wanted) if isinstance(wanted, (list, tuple)) else wanted
            restored = {_plain(g[key]) for g in optimizer.param_groups if key in g}
            if restored and restored != {wanted}:
                old = restored.pop() if len(restored) == 1 else sorted(restored)
                changes.append(f"{name} {key} {old!r} -> {wanted!r}")
                for group in optimizer.param_groups:
                    group[key] = wanted
    return changes


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The model settings (`model.<key>`) whose value differs from the checkpoint's."""
    return [
        f"model.{key} {_plain(saved[key])!r} -> {_plain(current[key])!r}"
        for key in current
        if key in saved and _plain(saved[key]) != _plain(current[key])
    ]


def apply_on_resume(
    saved_hparams: Mapping[str, Any],
    hparams: Mapping[str, Any],
    optimizers: Mapping[str, Optimizer],
    announce: bool = True,
) -> None:
    """Apply the command line's optimizer settings; log (when `announce`: rank 0) every setting
    that differs from the checkpoint's."""
    optimizer_changes = apply_optimizer_settings(optimizers)
    model_changes = changed_settings(saved_hparams, hparams)
    if not announce:
        return
    for change in optimizer_changes:
        log.info("resume: %s (the command line's setting, not the checkpoint's)", change)
    if model_changes:
        log.warning(
            "resume: the command line changes settings the checkpoint was trained with, applied "
            "from here on: %s",
            "; ".join(model_changes),
        )


def _is_number_setting(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_is_number_setting(v) for v in value)
    return isinstance(value, Real) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """Config containers as plain lists and dicts, sequences as tuples: comparable and printable."""
    if isinstance(value, Container):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
