"""The held-out slice (`data.holdout`) and `val/r_v`: never trained on, the same in every run,
scored at every evaluation without moving any random stream, equal on every rank."""

from __future__ import annotations

import csv
import math
import types
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict

from dcgan_lightning.callbacks.overfitting import OverfittingRatio
from dcgan_lightning.data.base import ImageDataModule
from dcgan_lightning.data.shapes import ShapesDataModule
from dcgan_lightning.errors import UserError
from dcgan_lightning.rng import rng_states
from dcgan_lightning.train import train
from tests.conftest import compose_config, fast_ranks, requires_cuda


def shapes(**kwargs) -> ShapesDataModule:
    dm = ShapesDataModule(**{"num_images": 64, "image_size": 32, "batch_size": 8, **kwargs})
    dm.setup("fit")
    return dm


def rows(images: torch.Tensor) -> list[bytes]:
    """Each image's bytes: images compared by content."""
    return [image.numpy().tobytes() for image in images.cpu()]


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """Inverse of the datamodule's [-1, 1] conversion (exact for uint8 pixels)."""
    return batch.add(1).mul(127.5).round().to(torch.uint8)


def same_states(a: dict, b: dict) -> bool:
    flat = [(a["torch"], b["torch"]), *zip(a["cuda"], b["cuda"], strict=True)]
    return (
        all(torch.equal(x, y) for x, y in flat)
        and torch.equal(a["numpy"][1], b["numpy"][1])
        and a["numpy"][2:] == b["numpy"][2:]
        and a["python"] == b["python"]
    )


# -- the split ---------------------------------------------------------------------------------
def test_split_is_disjoint_complete_and_the_same_whatever_the_run_seed() -> None:
    full = rows(shapes().images)
    assert len(set(full)) == 64  # distinct images: content identifies them
    pl.seed_everything(1)
    before = rng_states()
    first = shapes(holdout=8)
    assert same_states(before, rng_states())  # the split draws nothing from the run's streams
    pl.seed_everything(2)
    second = shapes(holdout=8)
    assert len(first.holdout_images) == 8 and len(first.images) == 56
    train, heldout = rows(first.images), rows(first.holdout_images)
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(full)
    assert torch.equal(first.holdout_images, second.holdout_images)
    assert torch.equal(first.images, second.images)


@pytest.mark.parametrize(("holdout", "held"), [(0.1, 6), (0.01, 1), (5, 5), (0, 0), (None, 0)])
def test_holdout_is_a_count_or_a_fraction(holdout, held: int) -> None:
    dm = shapes(holdout=holdout)
    assert (0 if dm.holdout_images is None else len(dm.holdout_images)) == held
    assert len(dm.images) == 64 - held
    if not held:  # off: the images as loaded, in their order
        assert torch.equal(dm.images, dm.load_images())


def test_a_larger_holdout_contains_a_smaller_one() -> None:
    """The held-out slice is the tail of one fixed order: raising data.holdout only adds images."""
    small, large = rows(shapes(holdout=4).holdout_images), rows(shapes(holdout=10).holdout_images)
    assert set(small) <= set(large)


@pytest.mark.parametrize("on_device", [False, True], ids=["loader", "device"])
def test_held_out_images_are_never_in_training_batches(on_device: bool) -> None:
    dm = shapes(holdout=8, on_device=on_device, batch_size=5)
    loader = dm.train_dataloader()
    assert type(loader).__name__ == ("DeviceBatches" if on_device else "DataLoader")
    heldout, seen = set(rows(dm.holdout_images)), set()
    for _ in range(4):
        for batch in loader:
            seen |= set(rows(batch))
    assert not seen & heldout
    assert seen == set(rows(dm.images))  # every training image was drawn in 4 epochs


def test_metrics_real_set_is_from_the_training_images_and_unchanged_by_a_holdout() -> None:
    plain, held = shapes(), shapes(holdout=8)
    for n in (20, 56):
        held.num_val_images = n
        real = torch.cat(list(held.val_dataloader()))
        assert len(real) == n and not set(rows(real)) & set(rows(held.holdout_images))
    held.num_val_images = plain.num_val_images = 20
    # The same real images (and so the same cached features) as a run without a holdout.
    real = [torch.cat(list(dm.val_dataloader())) for dm in (held, plain)]
    assert torch.equal(*real)


def test_a_holdout_that_leaves_too_few_training_images_is_refused() -> None:
    with pytest.raises(UserError, match=r"data.holdout=64 holds out 64 of 64 images, leaving none"):
        shapes(holdout=64)
    expected = r"data.holdout=0.5 holds out 32 of 64 images: 32 images, fewer than data.batch_si"
    with pytest.raises(UserError, match=expected) as error:
        shapes(holdout=0.5, batch_size=40)
    assert "lower data.holdout" in str(error.value)
    shapes(holdout=0.5, batch_size=32)  # exactly one batch left: fine


@pytest.mark.parametrize("holdout", [1.5, -1, True, "ten"])
def test_holdout_must_be_a_count_or_a_fraction(holdout) -> None:
    with pytest.raises(UserError, match=r"a number of images .* or a fraction in"):
        ShapesDataModule(holdout=holdout)


def test_the_split_sizes_are_logged(caplog) -> None:
    with caplog.at_level("INFO", logger="dcgan_lightning.data.base"):
        shapes(holdout=0.1)
    assert "Held out 6 of 64 images (data.holdout=0.1), never trained on: training on 58" in (
        caplog.text
    )


@pytest.mark.parametrize("name", ["picasso", "picasso_plus", "rembrandt", "monet"])
def test_small_painting_experiments_hold_out_a_tenth(tmp_path: Path, name: str) -> None:
    cfg = compose_config([f"+experiment={name}"], tmp_path)
    assert cfg.data.holdout == 0.1
    assert "overfitting" in cfg.callbacks


def test_holdout_is_off_by_default_for_every_dataset(tmp_path: Path) -> None:
    for data in ("shapes", "fashion_mnist", "image_folder", "celeba"):
        assert compose_config([f"data={data}"], tmp_path).data.holdout is None


# -- val/r_v -----------------------------------------------------------------------------------
class SameHeldOut(ShapesDataModule):
    """Its "held-out" images are its training images: D cannot tell them apart, r_v = 0."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.holdout_images = self.images.clone()


def scored(make_cfg, datamodule: ImageDataModule, *overrides: str) -> dict[str, float]:
    """The callback's values on a fresh model; asserts that it moved no RNG stream and no weight."""
    cfg = make_cfg(*overrides)
    model = instantiate(cfg.model, image_size=datamodule.image_size, channels=datamodule.channels)
    callback = OverfittingRatio()
    callback.setup(types.SimpleNamespace(datamodule=datamodule), model, "fit")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    before = rng_states()
    values = callback.compute(model)
    assert same_states(before, rng_states())
    after = model.state_dict()  # BatchNorm statistics and spectral-norm vectors included
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    return values


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("model=dcgan_plus",),  # DiffAugment, spectral norm, EMA generator
        ("model.diffaugment=[color,translation,cutout]", "model.discriminator.dropout=0.3"),
    ],
    ids=["dcgan", "dcgan_plus", "diffaugment_dropout"],
)
def test_r_v_is_zero_when_the_held_out_images_are_the_training_images(make_cfg, overrides):
    dm = SameHeldOut(num_images=24, image_size=32, batch_size=8)
    dm.setup("fit")
    values = scored(make_cfg, dm, *overrides)
    assert values["d_heldout"] == values["d_train"] and values["r_v"] == 0.0
    assert values["d_generated"] != values["d_train"]


def test_r_v_scores_the_real_held_out_slice(make_cfg) -> None:
    dm = ShapesDataModule(num_images=64, image_size=32, batch_size=8, holdout=12)
    dm.setup("fit")
    values = scored(make_cfg, dm)
    gap = values["d_train"] - values["d_generated"]
    assert values["r_v"] == pytest.approx((values["d_train"] - values["d_heldout"]) / gap)
    assert values["d_heldout"] != values["d_train"]
    assert scored(make_cfg, dm) == values  # fixed images and noise: the same at every evaluation


class RecordTraining(Callback):
    """Every training batch (back as uint8) and the r_v each evaluation computed, per rank, saved
    to `dirpath/rank<r>.pt`. At module level: spawned ranks unpickle it by name."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.batches: list[torch.Tensor] = []
        self.r_v: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batches.append(to_uint8(batch))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # after OverfittingRatio's
        if not trainer.sanity_checking:
            ratio = next(c for c in trainer.callbacks if isinstance(c, OverfittingRatio))
            self.r_v.append(ratio.last["r_v"])

    def on_train_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        torch.save(
            {
                "batches": torch.cat(self.batches),
                "r_v": self.r_v,
                "logged": float(trainer.callback_metrics["val/r_v"]),
                "heldout": dm.holdout_images,
                "real": torch.cat(list(trainer.val_dataloaders)).to(torch.uint8),
            },
            self.dirpath / f"rank{trainer.global_rank}.pt",
        )


def record_run(make_cfg, tmp_path: Path, *overrides: str) -> tuple[dict, list[dict], DictConfig]:
    cfg = make_cfg("logger=csv", "data.holdout=8", *overrides)
    with open_dict(cfg):
        cfg.trainer.max_epochs = 2
        cfg.callbacks.record = {"_target_": f"{__name__}.RecordTraining", "dirpath": str(tmp_path)}
    metrics = train(cfg)
    world = cfg.trainer.devices
    return metrics, [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)], cfg


def never_trained_on(record: dict) -> None:
    heldout = set(rows(record["heldout"]))
    assert len(heldout) == 8
    assert not set(rows(record["batches"])) & heldout
    assert not set(rows(record["real"])) & heldout  # the metrics' real set


@pytest.mark.parametrize("on_device", [False, True], ids=["loader", "device"])
def test_val_r_v_is_logged_at_every_evaluation(make_cfg, tmp_path: Path, on_device: bool) -> None:
    metrics, (record,), cfg = record_run(make_cfg, tmp_path, f"data.on_device={on_device}")
    assert math.isfinite(metrics["val/r_v"]) and len(record["r_v"]) == 2
    assert record["logged"] == pytest.approx(record["r_v"][-1])
    never_trained_on(record)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        logged = [float(r["val/r_v"]) for r in csv.DictReader(f) if r.get("val/r_v")]
    assert logged == pytest.approx(record["r_v"])
    assert (Path(cfg.paths.output_dir) / "plots" / "metrics.png").is_file()


def test_without_evaluations_a_holdout_warns_that_r_v_is_not_logged(make_cfg) -> None:
    cfg = make_cfg("data.holdout=8", "metrics=none", "logger=none")
    with pytest.warns(UserWarning, match=r"no evaluation runs .* val/r_v is never logged"):
        metrics = train(cfg)
    assert "val/r_v" not in metrics


def test_without_a_holdout_the_callback_does_nothing(make_cfg) -> None:
    metrics = train(make_cfg("logger=none"))
    assert "val/swd" in metrics and "val/r_v" not in metrics


@pytest.mark.slow
def test_two_ranks_log_the_same_r_v(make_cfg, tmp_path: Path) -> None:
    metrics, ranks, _ = record_run(make_cfg, tmp_path, "trainer=ddp_sim", fast_ranks())
    r0, r1 = ranks
    assert len(r0["r_v"]) == 2 and r0["r_v"] == r1["r_v"]  # computed apart, bit for bit equal
    assert r0["logged"] == r1["logged"] == pytest.approx(r0["r_v"][-1])
    assert metrics["val/r_v"] == pytest.approx(r0["r_v"][-1])
    for record in ranks:
        never_trained_on(record)
    assert not set(rows(r0["real"])) & set(rows(r1["real"]))  # each rank its share


@requires_cuda
@pytest.mark.gpu
def test_r_v_on_a_gpu_leaves_the_cuda_streams_alone(make_cfg) -> None:
    dm = ShapesDataModule(num_images=64, image_size=32, batch_size=8, holdout=12)
    dm.setup("fit")
    cfg = make_cfg("model=dcgan_plus")
    model = instantiate(cfg.model, image_size=32, channels=3).cuda()
    callback = OverfittingRatio()
    callback.setup(types.SimpleNamespace(datamodule=dm), model, "fit")
    torch.manual_seed(5)
    before = [torch.cuda.get_rng_state(d) for d in range(torch.cuda.device_count())]
    cpu = torch.get_rng_state()
    values = callback.compute(model)
    assert math.isfinite(values["r_v"])
    after = [torch.cuda.get_rng_state(d) for d in range(torch.cuda.device_count())]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert torch.equal(cpu, torch.get_rng_state())
    assert callback.compute(model) == values
