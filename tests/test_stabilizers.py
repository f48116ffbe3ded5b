"""The small-data stabilisers: DiffAugment, generator EMA, spectral norm (losses: test_models)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from dcgan_lightning.models.diffaugment import DiffAugment
from dcgan_lightning.models.discriminator import Discriminator
from dcgan_lightning.models.ema import EMA
from dcgan_lightning.models.gan_module import GAN
from dcgan_lightning.models.init import dcgan_init


def test_diffaugment_is_differentiable_and_changes_images() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32, requires_grad=True)
    for policy in (["color"], ["translation"], ["cutout"], ["color", "translation", "cutout"]):
        y = DiffAugment(policy)(x)
        assert y.shape == x.shape and not torch.allclose(y, x)
        (grad,) = torch.autograd.grad(y.square().sum(), x)
        assert grad.abs().sum() > 0  # gradients reach the input: G can learn through it
    assert DiffAugment([])(x) is x


def test_diffaugment_names_its_ops_when_given_a_wrong_one() -> None:
    with pytest.raises(ValueError, match=r"\['blur'\].*\['color', 'cutout', 'translation'\]"):
        DiffAugment(["color", "blur"])
    with pytest.raises(TypeError, match="list of op names"):
        DiffAugment("color,translation")  # the string form Hydra would split into a sweep


def test_translation_shifts_and_cutout_zeroes_a_square() -> None:
    torch.manual_seed(1)
    x = torch.arange(32.0).view(1, 1, 1, 32).expand(4, 1, 32, 32) + 1  # column index + 1
    shifted = DiffAugment(["translation"])(x)
    for image in shifted[:, 0]:  # a row is the original row moved by dx, |dx| <= 32/8, zero-filled
        row = image[image.abs().sum(1).argmax()]
        cols = row.nonzero().flatten()
        dx = int(row[cols[0]].item()) - 1 - int(cols[0])
        assert abs(dx) <= 4 and len(cols) == 32 - abs(dx)
        assert torch.equal(row[cols], cols.float() + 1 + dx)
    cut = DiffAugment(["cutout"])(torch.ones(16, 3, 32, 32))
    zeros_per_image = (cut[:, 0] == 0).flatten(1).sum(1)
    assert zeros_per_image.max() == 16 * 16  # a 16x16 square when fully inside
    assert (zeros_per_image > 0).all()


class CountingAugment(nn.Module):
    """Stands in for the module's DiffAugment and records what it is applied to."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []  # requires_grad of each input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.requires_grad)
        return x


def test_diffaugment_sees_real_and_fake_in_both_steps(make_cfg) -> None:
    cfg = make_cfg("model.diffaugment=[color]", "callbacks=none", "logger=none")
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=dm.image_size, channels=dm.channels)
    assert isinstance(model.augment, DiffAugment) and model.augment.ops == ["color"]
    model.augment = CountingAugment()
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], limit_train_batches=1)
    trainer.fit(model, datamodule=dm)
    # D step: real (no grad), fake.detach() (no grad); G step: fake, with its graph back to G.
    assert model.augment.calls == [False, False, True]


def test_ema_follows_its_update_rule_and_is_what_generation_uses(make_cfg) -> None:
    cfg = make_cfg("+model.ema={decay:0.75,start_step:0}")
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=dm.image_size, channels=dm.channels)
    model._update_ema()  # first update copies G
    ema, g = model.ema_generator.module, model.generator
    for p_ema, p in zip(ema.parameters(), g.parameters()):
        assert torch.equal(p_ema, p)
    old_ema = [p.detach().clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p))
        for b in g.buffers():
            b.add_(3)
    model._update_ema()
    for b_ema, b in zip(ema.buffers(), g.buffers()):  # BN statistics are copied, not averaged
        assert torch.equal(b_ema, b)
    for p_old, p_ema, p in zip(old_ema, ema.parameters(), g.parameters()):
        assert torch.allclose(p_ema, 0.75 * p_old + 0.25 * p, atol=1e-6)
    z = model.fixed_noise[:4]
    with model.standing_stats.applied(ema, model._sample_inputs):  # its own BN statistics
        assert torch.equal(model.generate(z), ema.eval()(z))
    assert not torch.allclose(model.generate(z), g.eval()(z))


def test_ema_tracks_the_generator_exactly_before_its_start_step(make_cfg) -> None:
    cfg = make_cfg("+model.ema={decay:0.5,start_step:1000}")
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=dm.image_size, channels=dm.channels)
    for _ in range(2):
        with torch.no_grad():
            for p in model.generator.parameters():
                p.add_(1.0)
        model._update_ema()
    for p_ema, p in zip(model.ema_generator.module.parameters(), model.generator.parameters()):
        assert torch.equal(p_ema, p)


def test_ema_rampup_holds_a_half_life_of_rampup_times_the_updates_then_decay() -> None:
    g = nn.Linear(1, 1, bias=False)
    # Half-life 0.25 x n updates, at most ln(0.5) / ln(0.9) = 6.58: beta_n = min(0.9, 0.5 ** (4/n)).
    ema = EMA(g, decay=0.9, rampup=0.25)
    decays, weights = [], []
    for step in range(60):
        with torch.no_grad():
            g.weight.fill_(float(step))
        decays.append(ema.current_decay())
        ema.update(g, step)
        weights.append(ema.module.weight.item())
    assert decays[0] == 0.0 and weights[0] == 0.0  # the first update copies G
    assert decays[1] == pytest.approx(0.0625)  # 0.5 ** 4
    assert decays[4] == pytest.approx(0.5) and decays[8] == pytest.approx(0.70710678)
    assert weights[8] == pytest.approx(0.70710678 * weights[7] + 0.29289322 * 8.0)
    assert decays[26] == pytest.approx(0.89885097)  # 0.5 ** (4 / 26): the last below 0.9
    assert decays[27:] == [pytest.approx(0.9)] * 33  # from 27 updates on: the configured decay
    assert weights[-1] == pytest.approx(0.9 * weights[-2] + 0.1 * 59.0)
    # Resumed, the count goes on where it was: the next decay is the one the run would have used.
    resumed = EMA(g, decay=0.9, rampup=0.25)
    mid = EMA(g, decay=0.9, rampup=0.25)
    for step in range(6):
        mid.update(g, step)
    resumed.load_state_dict(mid.state_dict())
    assert resumed.current_decay() == pytest.approx(decays[6])
    assert EMA(g, decay=0.9).current_decay() == 0.9  # no rampup: the decay from the first update
    with pytest.raises(ValueError, match="rampup"):
        EMA(g, decay=0.9, rampup=0)


def test_ema_rampup_is_stylegan2_ada_s_half_life_rule() -> None:
    """StyleGAN2-ADA (training/training_loop.py): half-life h = min(ema_kimg x 1000, ema_rampup x
    cur_nimg) images, beta = 0.5 ** (batch / max(h, 1e-8)), cur_nimg the images seen before the
    update. Its numbers for batch 64, ema_kimg 20, ema_rampup 0.05, worked out by hand:
    - full half-life 20,000 images = 312.5 batches: beta = 0.5 ** (1 / 312.5) = 0.99778438712;
    - after 1 batch: h = 0.05 x 64 = 3.2 images = 1/20 batch: beta = 0.5 ** 20 = 9.5367431640625e-7;
    - after 100: h = 0.05 x 6,400 = 320 images = 5 batches: beta = 0.5 ** (1/5) = 0.87055056330;
    - after 400: h = 0.05 x 25,600 = 1,280 images = 20 batches: 0.5 ** (1/20) = 0.96593632892;
    - after 6,250: h = 0.05 x 400,000 = 20,000 images, the cap: 0.99778438712 from there on.
    Here `decay` is the per-update beta at the full half-life: 0.5 ** (1 / 312.5)."""
    ema = EMA(nn.Linear(1, 1), decay=0.99778438712, rampup=0.05)
    expected = {0: 0.0, 1: 9.5367431640625e-7, 100: 0.87055056330, 400: 0.96593632892}
    # 6,249: h = 19,996.8 images, just under the cap: 0.5 ** (64 / 19,996.8) = 0.99778403296.
    expected |= {6249: 0.99778403296, 6250: 0.99778438712, 10000: 0.99778438712}
    for updates, beta in expected.items():
        ema._updates = updates
        assert ema.current_decay() == pytest.approx(beta, rel=1e-8, abs=1e-15), updates


def test_ema_rampup_comes_from_the_model_config(make_cfg) -> None:
    cfg = make_cfg("+model.ema={decay:0.99,start_step:0,rampup:0.05}")
    model = instantiate(cfg.model, image_size=cfg.data.image_size, channels=cfg.data.channels)
    assert (model.ema_generator.decay, model.ema_generator.rampup) == (0.99, 0.05)
    assert model.ema_generator.current_decay() == 0.0  # the first update copies G


def test_ema_is_saved_in_checkpoints(make_cfg) -> None:
    from pathlib import Path

    from dcgan_lightning.train import train

    cfg = make_cfg("+model.ema={decay:0.9,start_step:0}")
    train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert "ema_generator.n_averaged" in keys and any(
        k.startswith("ema_generator.module.") for k in keys
    )
    assert ckpt["state_dict"]["ema_generator.n_averaged"] == 2  # one update per G step


def test_spectral_norm_keeps_each_weight_near_unit_norm() -> None:
    torch.manual_seed(0)
    d = Discriminator(image_size=32, channels=3, features=16, spectral_norm=True)
    d.apply(dcgan_init)
    with torch.no_grad():
        for module in d.modules():
            if hasattr(module, "parametrizations"):
                module.parametrizations.weight.original.mul_(50.0)  # far from norm 1
        for _ in range(30):  # power iteration runs once per training-mode forward
            d(torch.randn(4, 3, 32, 32))
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
        assert abs(sigma.item() - 1.0) < 0.05
        assert conv.bias is not None  # no BatchNorm after it to stand in for one


@pytest.mark.parametrize("conditional", [False, True])
def test_spectral_norm_is_near_one_in_eval_mode_straight_after_the_init(conditional: bool) -> None:
    """The DCGAN init re-draws the weights under spectral norm: its power-iteration vectors must
    follow, or eval mode (no iteration) divides by the norm of weights long gone."""
    torch.manual_seed(0)
    opt = torch.optim.Adam
    extra = {"num_classes": 3, "conditional": {}} if conditional else {}
    gan = GAN(32, 3, {"features": 8}, {"features": 16, "spectral_norm": True}, opt, opt, **extra)
    layers = [m for m in gan.discriminator.modules() if hasattr(m, "parametrizations")]
    assert len(layers) == 4 + conditional  # 4 convs (and the projection's embedding)
    gan.eval()
    for layer in layers:
        weight = layer.weight.detach()  # eval mode: the stored u and v, no iteration
        sigma = torch.linalg.matrix_norm(weight.flatten(1) if weight.dim() > 2 else weight, ord=2)
        assert abs(sigma.item() - 1.0) < 0.05, (type(layer).__name__, sigma.item())


def test_only_convs_without_batchnorm_have_biases() -> None:
    plain = Discriminator(image_size=32, channels=3, features=16)
    assert all(m.bias is None for m in plain.modules() if isinstance(m, nn.Conv2d))
