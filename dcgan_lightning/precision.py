"""`${amp_precision:cpu}` and `${amp_precision:gpu}`: the fastest precision a device trains with.

bf16 autocast about doubles a DCGAN step on CPUs with bf16 instructions (AVX512-BF16, AMX) and
speeds up GPUs from Ampere on. Without those instructions bf16 is emulated: slower than fp32 on
a CPU, slower than fp16 (with a GradScaler) on an older GPU. Resolved when the run starts, on the
machine that trains. torch and Lightning are imported when a resolver is resolved, not when it
is registered: composing a config (`--help`, `--cfg job`) imports neither.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def _cpu_has_bf16() -> bool:
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def amp_precision(device: str) -> str:
    """A Lightning `precision` for `device` ("cpu" or "gpu")."""
    import torch

    if device == "gpu":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(
            including_emulation=False
        )
        return "bf16-mixed" if native else "16-mixed"
    if device == "cpu":
        return "bf16-mixed" if _cpu_has_bf16() else "32-true"
    raise ValueError(f"amp_precision takes 'cpu' or 'gpu', got {device!r}")


def trainer_precision(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Overrides for the Trainer that make `16-mixed` on a CPU real fp16.

    Lightning turns `precision=16-mixed` on a CPU into bf16, so the GradScaler path that GPUs
    without bf16 take (V100, T4) would never run off a GPU. torch has fp16 autocast and a GradScaler
    on CPUs: this passes Lightning a `MixedPrecision` plugin built with one, shared by both
    optimizers. Slow, but the same code path: for debugging, like `trainer=ddp_sim` for DDP.
    """
    if trainer_cfg.get("accelerator") != "cpu" or str(trainer_cfg.get("precision")) != "16-mixed":
        return {}
    import torch
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu")
    return {"precision": None, "plugins": [MixedPrecision("16-mixed", "cpu", scaler=scaler)]}


def register_resolvers() -> None:
    """`${amp_precision:...}` for conf/trainer/ (idempotent)."""
    if not OmegaConf.has_resolver("amp_precision"):
        OmegaConf.register_new_resolver("amp_precision", amp_precision)
