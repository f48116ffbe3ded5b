"""Adaptive augmentation: p follows D's overfitting, resumes exactly, agrees across ranks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dcgan_lightning.models.ada import AdaptiveAugment
from dcgan_lightning.models.diffaugment import DiffAugment
from tests.conftest import requires_cuda, start_ranks

POLICY = ["color", "translation", "cutout"]


def logits(n: int, positive: int) -> torch.Tensor:
    """n logits of which `positive` are > 0 and the rest < 0 (sign mean (2 * positive - n) / n)."""
    signs = torch.ones(n)
    signs[positive:] = -1
    return signs * torch.rand(n).add(0.1)


def expected_p(r_ts: list[float], step: float, target: float = 0.6) -> float:
    """ADA's rule in plain Python: p += sign(r_t - target) * step, clamped to [0, 1]."""
    p = 0.0
    for r_t in r_ts:
        p = min(1.0, max(0.0, p + (r_t > target) * step - (r_t < target) * step))
    return p


def smooth_images(n: int) -> torch.Tensor:
    """Random smooth 16 px images (bilinear upsampling of 4x4 noise), all of one distribution."""
    return F.interpolate(torch.rand(n, 3, 4, 4) * 2 - 1, size=16, mode="bilinear")


def train_d(fixed_real: bool, steps: int = 200) -> tuple[AdaptiveAugment, list[float]]:
    """A tiny D told apart real from fake images of the same distribution, under ADA.

    With `fixed_real` the real images are the same 8 every batch (a tiny dataset): D can only
    win by memorising them. Otherwise they are fresh draws, as from a large dataset: D stays at
    chance. Returns the controller and p after every batch.
    """
    torch.manual_seed(0)
    real = smooth_images(8)
    D = nn.Sequential(
        nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 8 * 8, 1)
    )
    opt = torch.optim.Adam(D.parameters(), lr=1e-3)
    ada = AdaptiveAugment(POLICY, interval=4, kimg=1)  # one step: 8 * 4 / 1000 = 0.032
    history = []
    for _ in range(steps):
        if not fixed_real:
            real = smooth_images(8)
        d_real, d_fake = D(ada(real)).flatten(), D(ada(smooth_images(8))).flatten()
        loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ada.observe(d_real)
        ada.adjust(batch_size=8, world_size=1)
        history.append(float(ada.p))
    return ada, history


def test_p_rises_when_d_memorises_a_tiny_set() -> None:
    ada, history = train_d(fixed_real=True)
    assert 0 < history[49] < history[99] < history[-1] and history[-1] > 0.4
    assert int(ada.batches) == 200 and float(ada.count) == 0  # reset at the last adjustment


def test_p_stays_at_zero_when_d_cannot_memorise() -> None:
    ada, history = train_d(fixed_real=False)
    assert max(history) == 0.0 and float(ada.r_t) < 0.6


def test_p_stays_at_zero_below_the_target_and_comes_down() -> None:
    ada = AdaptiveAugment(POLICY, interval=4, kimg=1)
    torch.manual_seed(0)
    for _ in range(100):
        ada.observe(logits(32, 19))  # sign mean 6/32 ~ 0.19 < 0.6: D near chance
        ada.adjust(batch_size=32)
        assert float(ada.p) == 0.0
    assert float(ada.r_t) == pytest.approx(6 / 32)
    ada.observe(torch.full((32,), float("nan")))  # a non-finite step: left out of r_t
    ada.observe(logits(32, 32))
    for _ in range(4):
        ada.adjust(batch_size=32)
    assert float(ada.r_t) == 1.0 and float(ada.p) == pytest.approx(32 * 4 / 1000)
    ada.p.zero_()
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(ada(x), x)  # p = 0: no augmentation at all

    ada.p.fill_(0.5)  # once D stops overfitting, p comes back down
    for _ in range(8):
        ada.observe(logits(32, 19))
        ada.adjust(batch_size=32)
    assert float(ada.p) == pytest.approx(0.5 - 2 * 32 * 4 / 1000)


def test_adjusts_every_interval_batches_by_the_ada_step() -> None:
    ada = AdaptiveAugment(POLICY, target=0.6, interval=3, kimg=2)
    step = 16 * 2 * 3 / 2000  # batch 16 on each of 2 ranks, 3 batches per adjustment
    r_ts = []
    torch.manual_seed(0)
    for batch in range(30):
        positive = 16 if batch < 18 else 4  # overfitting for 6 intervals, then not
        ada.observe(logits(16, positive))
        ada.adjust(batch_size=16, world_size=2)
        if (batch + 1) % 3 == 0:  # p only moves at an adjustment
            r_ts.append((2 * positive - 16) / 16)
        assert float(ada.p) == pytest.approx(expected_p(r_ts, step), abs=1e-6)
    assert float(ada.p) == pytest.approx(6 * step - 4 * step, abs=1e-6)


def test_state_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    def run(module: AdaptiveAugment, batches: range) -> list[float]:
        ps = []
        for b in batches:
            torch.manual_seed(b)
            module.observe(logits(8, 8 if b % 3 else 2))
            module.adjust(batch_size=8)
            ps.append(float(module.p))
        return ps

    ada = AdaptiveAugment(POLICY, interval=4, kimg=0.2)
    run(ada, range(10))  # stops mid-interval: 2 batches of statistics pending
    parent = nn.ModuleDict({"augment": ada})  # as inside the GAN module's checkpoint
    torch.save(parent.state_dict(), tmp_path / "state.pt")
    assert {k.removeprefix("augment.") for k in parent.state_dict()} == {
        "p",
        "r_t",
        "sign_sum",
        "count",
        "batches",
    }

    resumed = nn.ModuleDict({"augment": AdaptiveAugment(POLICY, interval=4, kimg=0.2)})
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for name, value in ada.state_dict().items():
        assert torch.equal(resumed.augment.state_dict()[name], value), name
    assert float(ada.p) > 0 and float(ada.count) == 16
    assert run(resumed.augment, range(10, 30)) == run(ada, range(10, 30))


def test_p_is_the_probability_per_op_and_image() -> None:
    x = torch.rand(4000, 3, 8, 8) * 2 - 1
    for p in (0.25, torch.tensor(0.25)):
        y = DiffAugment(["color"])(x, p)
        changed = (y != x).flatten(1).any(1)
        assert 0.22 < changed.float().mean() < 0.28
        assert torch.equal(y[~changed], x[~changed])  # skipped images: bit for bit unchanged
    # Each op draws its own mask: with two ops, about p^2 of the images get both.
    y = DiffAugment(["color", "cutout"])(x, 0.5)
    cut = (y == 0).flatten(2).all(1).any(1)  # some pixel zero in every channel: cutout ran
    recoloured = ((y != x) & (y != 0)).flatten(1).any(1)
    assert 0.22 < (cut & recoloured).float().mean() < 0.28
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        DiffAugment(["color"])(x, 1.5)


def test_p_zero_is_the_identity_and_p_one_plain_diffaugment() -> None:
    x = torch.rand(16, 3, 32, 32, requires_grad=True)
    ada = AdaptiveAugment(POLICY)
    assert torch.equal(ada(x), x) and DiffAugment(POLICY)(x, 0.0) is x
    ada.p.fill_(1.0)
    torch.manual_seed(3)
    adapted = ada(x)
    torch.manual_seed(3)
    plain = DiffAugment(POLICY)(x)
    assert torch.equal(adapted, plain)  # same RNG state, same images
    (grad,) = torch.autograd.grad(adapted.square().sum(), x)
    assert grad.abs().sum() > 0  # differentiable: G learns through it
    # Halfway, gradients reach the input through both the augmented and the skipped images.
    ada.p.fill_(0.5)
    (grad,) = torch.autograd.grad(ada(x).sum(), x)
    assert (grad.flatten(1).abs().sum(1) > 0).all()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"set model\.diffaugment"):
        AdaptiveAugment([])
    with pytest.raises(ValueError, match="target"):
        AdaptiveAugment(POLICY, target=1.5)
    with pytest.raises(ValueError, match="interval"):
        AdaptiveAugment(POLICY, interval=0)
    with pytest.raises(ValueError, match="kimg"):
        AdaptiveAugment(POLICY, kimg=0)


def rank_worker(rank: int, world: int, port: int, tmp: str) -> None:
    """One gloo rank: its own logits and counts; records p, r_t and the all-reduces it ran."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    calls = []
    all_reduce = dist.all_reduce

    def counting(tensor: torch.Tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        ada = AdaptiveAugment(POLICY, target=0.6, interval=2, kimg=0.1)
        torch.manual_seed(rank)
        ps = []
        for batch in range(4):
            # Interval 1: rank 0 all positive (12 logits), rank 1 sign mean 0 (4 logits).
            # Pooled 12/16 = 0.75 > 0.6, though the mean of the ranks' means is 0.5 < 0.6.
            # Interval 2: rank 0 sign mean 0 (12), rank 1 all positive (4): pooled 0.25.
            if rank == 0:
                ada.observe(logits(12, 12 if batch < 2 else 6))
            else:
                ada.observe(logits(4, 2 if batch < 2 else 4))
            ada.adjust(batch_size=8, world_size=world)
            ps.append(float(ada.p))
        torch.save({"ps": ps, "r_t": float(ada.r_t), "calls": calls}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_on_p_from_the_pooled_r_t(tmp_path: Path) -> None:
    from tests.test_metrics import free_port  # here: spawned ranks need not import its imports

    start_ranks(rank_worker, 2, free_port(), str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    step = 8 * 2 * 2 / 100
    expected = [0.0, step, step, 0.0]  # up on the pooled 0.75, down on the pooled 0.25
    for record in ranks:
        assert record["ps"] == pytest.approx(expected, abs=1e-6)
        assert record["r_t"] == pytest.approx(0.25)
        assert record["calls"] == [2, 2]  # one all-reduce of (sum, count) per adjustment


@requires_cuda
@pytest.mark.gpu
def test_no_host_sync_on_cuda() -> None:
    ada = AdaptiveAugment(POLICY, interval=2, kimg=0.1).cuda()
    x = torch.rand(8, 3, 32, 32, device="cuda")
    ada.p.fill_(0.5)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            y = ada(x)
            ada.observe(y.mean((1, 2, 3)) - 0.4)
            ada.adjust(batch_size=8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ada.p.is_cuda and 0 <= float(ada.p) <= 1
