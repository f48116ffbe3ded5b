"""The DCGAN weight initialisation of Radford et al."""

import torch
from torch import nn

# Power iterations after the init re-draws a spectrally normalised weight: its vectors u and v
# describe the weight drawn at construction, and eval mode (no iteration) divides by their stale
# estimate. Torch runs 15 at construction; more brings each layer's norm within ~1% of 1.
_POWER_ITERATIONS = 50


def dcgan_init(module: nn.Module) -> None:
    """Conv and linear weights ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02); biases 0. Under
    spectral norm the new weight's power-iteration vectors are re-estimated."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        weight = getattr(module, "parametrizations", None)
        target = weight.weight.original if weight is not None else module.weight
        nn.init.normal_(target, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
        if weight is not None:
            _refresh_spectral_norm(weight.weight)
    elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def _refresh_spectral_norm(parametrized: nn.Module) -> None:
    """Re-run the power iteration of `spectral_norm` on the weight as it is now."""
    for sn in parametrized:
        if hasattr(sn, "_power_method"):  # torch.nn.utils.parametrizations._SpectralNorm
            sn._power_method(sn._reshape_weight_to_matrix(parametrized.original), _POWER_ITERATIONS)
