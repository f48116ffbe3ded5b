"""GAN losses on raw discriminator logits (never on sigmoid outputs: that breaks under autocast)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce", "hinge", "lsgan")


def discriminator_loss(
    kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Loss that D minimises. `label_smoothing` makes the BCE target for real images 1 - s."""
    if kind == "bce":  # targets in fp32: 1 - 0.1 in bf16 is 0.8984
        real_logits, fake_logits = real_logits.float(), fake_logits.float()
        real_target = torch.full_like(real_logits, 1.0 - label_smoothing)
        return F.binary_cross_entropy_with_logits(
            real_logits, real_target
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "lsgan":
        return 0.5 * ((real_logits - 1.0).pow(2).mean() + fake_logits.pow(2).mean())
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def generator_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Loss that G minimises: the non-saturating form for BCE (target 1 on fakes)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "lsgan":
        return 0.5 * (fake_logits - 1.0).pow(2).mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def d_outputs(
    kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> dict[str, torch.Tensor]:
    """`d_real` and `d_fake` as logged: for BCE, D's mean probability that the images are real
    (sigmoid of its logits); for hinge and LSGAN, whose scores are not log-odds, the mean raw score
    (hinge pushes reals above +1 and fakes below -1; LSGAN reals to 1 and fakes to 0)."""
    real, fake = real_logits.detach().float(), fake_logits.detach().float()
    if kind == "bce":
        real, fake = torch.sigmoid(real), torch.sigmoid(fake)
    return {"d_real": real.mean(), "d_fake": fake.mean()}
