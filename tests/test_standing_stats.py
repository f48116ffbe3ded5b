"""Samples come from BatchNorm statistics of the sampled weights, not stale or borrowed ones."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate

from dcgan_lightning.models.standing_stats import batchnorms


def _model(make_cfg, *overrides: str):
    cfg = make_cfg(*overrides)
    dm = instantiate(cfg.data)
    return instantiate(cfg.model, image_size=dm.image_size, channels=dm.channels)


@pytest.mark.parametrize("ema", [False, True])
def test_samples_use_batchnorm_statistics_of_the_weights_sampled(make_cfg, ema: bool) -> None:
    """Running statistics that do not belong to the weights (ones that lag them; an EMA's, copied
    from the live G) must not reach the images: generate() matches the sampling net with its own
    batch statistics on a large batch, leaves the net's buffers and the global RNG alone."""
    model = _model(make_cfg, *(["+model.ema={decay:0.9,start_step:0}"] if ema else []))
    if ema:
        model._update_ema()
        with torch.no_grad():  # the EMA's weights move away from G's; its statistics are G's
            for p in model.ema_generator.module.parameters():
                p.mul_(1.5)
    net = model.sampling_generator
    for m in batchnorms(net):  # stale statistics
        m.running_mean.fill_(2.0)
        m.running_var.fill_(0.05)
    z = model.sample_noise(512, torch.Generator().manual_seed(1))
    with torch.no_grad():
        own = copy.deepcopy(net).train()(z)  # each layer normalised by this batch's statistics
    rng, mode = torch.get_rng_state(), net.training
    images = model.generate(z)
    assert (images - own).abs().mean() < 0.1 * own.abs().mean()
    assert torch.equal(torch.get_rng_state(), rng)
    for m in batchnorms(net):
        assert torch.all(m.running_mean == 2.0) and torch.all(m.running_var == 0.05)
    assert net.training == mode


def test_statistics_are_estimated_again_only_when_the_weights_change(make_cfg) -> None:
    model = _model(make_cfg)
    calls = []
    model.generator.register_forward_hook(lambda *_: calls.append(1))
    z = model.fixed_noise[:4]
    first = model.generate(z)
    estimated = len(calls) - 1
    assert estimated == model.standing_stats.batches
    assert torch.equal(model.generate(z), first) and len(calls) == estimated + 2
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(0.01)  # as an optimizer step does, in place
    model.generate(z)
    assert len(calls) == 2 * estimated + 3


@pytest.mark.parametrize("ema", [False, True])
def test_checkpoints_hold_the_statistics_samples_were_drawn_with(make_cfg, ema: bool) -> None:
    """Generation from a checkpoint (the sampling weights in eval mode, as
    generation/loading.py loads them) draws what generate() drew."""
    model = _model(make_cfg, *(["+model.ema={decay:0.9,start_step:0}"] if ema else []))
    if ema:
        model._update_ema()
        with torch.no_grad():
            for p in model.ema_generator.module.parameters():
                p.mul_(1.5)
    net = model.sampling_generator
    for m in batchnorms(net):  # stale statistics
        m.running_mean.fill_(2.0)
        m.running_var.fill_(0.05)
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    prefix = "ema_generator.module." if ema else "generator."
    state = checkpoint["state_dict"]
    loaded = copy.deepcopy(net)
    loaded.load_state_dict(
        {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    )
    z = model.fixed_noise[:8]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(z), model.generate(z))
