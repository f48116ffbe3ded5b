"""`${amp_precision:cpu}` and `${amp_precision:gpu}`: the fastest precision a device trains with.

bf16 autocast about doubles a DCGAN step on CPUs with bf16 instructions (AVX512-BF16, AMX) and
speeds up GPUs from Ampere on. Without those instructions bf16 is emulated: slower than fp32 on
a CPU, slower than fp16 (with a GradScaler) on an older GPU. Resolved when the run starts, on the
machine that trains.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf


def _cpu_has_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def amp_precision(device: str) -> str:
    """A Lightning `precision` for `device` ("cpu" or "gpu")."""
    if device == "gpu":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(
            including_emulation=False
        )
        return "bf16-mixed" if native else "16-mixed"
    if device == "cpu":
        return "bf16-mixed" if _cpu_has_bf16() else "32-true"
    raise ValueError(f"amp_precision takes 'cpu' or 'gpu', got {device!r}")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("amp_precision"):
        OmegaConf.register_new_resolver("amp_precision", amp_precision)
