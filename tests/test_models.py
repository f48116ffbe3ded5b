"""Generator, discriminator, initialisation and losses as plain modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dcgan_lightning.models.discriminator import Discriminator
from dcgan_lightning.models.generator import Generator, channel_schedule
from dcgan_lightning.models.init import dcgan_init
from dcgan_lightning.models.losses import discriminator_loss, generator_loss


@pytest.mark.parametrize("size", [32, 64, 128, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_and_discriminator_shapes(size: int, channels: int) -> None:
    g = Generator(z_dim=16, image_size=size, channels=channels, features=4)
    d = Discriminator(image_size=size, channels=channels, features=4)
    images = g(torch.randn(2, 16))
    assert images.shape == (2, channels, size, size)
    assert d(images).shape == (2,)  # one logit per image


@pytest.mark.parametrize("arch", ["convtranspose", "upsample"])
def test_generator_output_is_squashed_by_tanh(arch: str) -> None:
    """Freshly initialised outputs are small anyway: blow up the last layer's pre-activations to
    see the squashing (without Tanh they would reach ~1e3)."""
    g = Generator(z_dim=16, image_size=32, channels=3, features=4, arch=arch)
    last = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
    with torch.no_grad():
        last.weight.mul_(1e4)
        images = g(torch.randn(4, 16))
    assert images.abs().max() <= 1.0
    assert (images.abs() > 0.999).float().mean() > 0.5  # saturated: tanh of large values


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arch": "upsample"},
        {"linear_projection": True},
        {"activation": "leaky_relu"},
        {"arch": "upsample", "linear_projection": True, "activation": "leaky_relu"},
    ],
)
def test_generator_variants(kwargs: dict) -> None:
    g = Generator(z_dim=8, image_size=64, channels=3, features=4, **kwargs)
    assert g(torch.randn(3, 8)).shape == (3, 3, 64, 64)
    layers = [type(m) for m in g.modules()]
    transposed = layers.count(nn.ConvTranspose2d)
    if kwargs.get("arch") == "upsample":  # only the z projection may be a transposed conv
        assert layers.count(nn.Upsample) == 4
        assert transposed == (0 if kwargs.get("linear_projection") else 1)
    if kwargs.get("linear_projection"):
        assert nn.Linear in layers
    if kwargs.get("activation") == "leaky_relu":
        assert nn.LeakyReLU in layers and nn.ReLU not in layers


def test_channel_schedule_matches_pytorch_examples_at_64px() -> None:
    assert channel_schedule(64, 64) == [512, 256, 128, 64]
    assert channel_schedule(256, 64)[0] == 512  # capped at 8x features


@pytest.mark.parametrize("size", [16, 48, 100, 512])
def test_bad_image_size_is_rejected(size: int) -> None:
    with pytest.raises(ValueError, match="power of two in \\[32, 256\\]"):
        Generator(z_dim=8, image_size=size, channels=3)


def test_discriminator_has_no_batchnorm_on_first_layer_and_no_sigmoid() -> None:
    d = Discriminator(image_size=64, channels=3, features=8, dropout=0.3)
    layers = list(d.main)
    assert isinstance(layers[0], nn.Conv2d) and isinstance(layers[1], nn.LeakyReLU)
    assert layers[1].negative_slope == 0.2
    assert isinstance(layers[2], nn.Dropout) and layers[2].p == 0.3
    assert not any(isinstance(m, nn.Sigmoid) for m in d.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 3


def test_dcgan_init_statistics() -> None:
    torch.manual_seed(0)
    g = Generator(z_dim=100, image_size=64, channels=3, features=64)
    g.apply(dcgan_init)
    convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    assert abs(convs[1].weight.std().item() - 0.02) < 0.001
    assert abs(convs[1].weight.mean().item()) < 0.001
    assert abs(bns[0].weight.mean().item() - 1.0) < 0.01
    assert abs(bns[0].weight.std().item() - 0.02) < 0.01
    assert all(torch.all(bn.bias == 0) for bn in bns)


def test_losses_match_their_formulas() -> None:
    real = torch.tensor([2.0, -1.0, 0.5])
    fake = torch.tensor([-3.0, 0.0, 1.5])
    sig = torch.sigmoid
    bce_d = -(torch.log(sig(real)).mean() + torch.log(1 - sig(fake)).mean())
    assert torch.allclose(discriminator_loss("bce", real, fake), bce_d, atol=1e-6)
    assert torch.allclose(generator_loss("bce", fake), -torch.log(sig(fake)).mean(), atol=1e-6)
    smooth = -(0.9 * torch.log(sig(real)) + 0.1 * torch.log(1 - sig(real))).mean()
    smooth_d = smooth - torch.log(1 - sig(fake)).mean()
    assert torch.allclose(discriminator_loss("bce", real, fake, 0.1), smooth_d, atol=1e-6)
    hinge_d = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
    assert torch.allclose(discriminator_loss("hinge", real, fake), hinge_d)
    assert torch.allclose(generator_loss("hinge", fake), -fake.mean())
    ls_d = 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()
    assert torch.allclose(discriminator_loss("lsgan", real, fake), ls_d)
    assert torch.allclose(generator_loss("lsgan", fake), 0.5 * ((fake - 1) ** 2).mean())
    with pytest.raises(ValueError, match="loss must be one of"):
        generator_loss("wasserstein", fake)
