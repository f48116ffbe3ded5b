"""Training sets held on the device: the same batches, in the same order, as the DataLoader path,
each rank its own shard, and no loader or per-batch copy on the way."""

from __future__ import annotations

import types

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from lightning.pytorch.utilities.data import _update_dataloader
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader

from dcgan_lightning.data import base, device_batches
from dcgan_lightning.data.device_batches import DeviceBatches, holds_on_device
from tests.conftest import requires_cuda
from tests.test_data import TensorImages

N, BATCH, EPOCHS = 40, 8, 3


def images() -> torch.Tensor:
    return torch.randint(0, 256, (N, 3, 32, 32), generator=torch.Generator().manual_seed(1),
                         dtype=torch.uint8)  # fmt: skip


def datamodule(on_device: bool | str, rank: int = 0, replicas: int = 1, device: str = "cpu"):
    """A datamodule on a stand-in trainer of `replicas` ranks (what train_dataloader reads)."""
    dm = TensorImages(images(), batch_size=BATCH, flip=True, on_device=on_device)
    dm.trainer = types.SimpleNamespace(
        world_size=replicas,
        distributed_sampler_kwargs={"num_replicas": replicas, "rank": rank}
        if replicas > 1
        else None,
        training=True,
        overfit_batches=0,
        strategy=types.SimpleNamespace(root_device=torch.device(device)),
    )
    dm.setup("fit")
    return dm


def as_lightning_prepares(dm, loader):
    """The loader as Lightning hands it to the fit loop (its DistributedSampler on many ranks)."""
    if isinstance(loader, DataLoader) and dm.trainer.distributed_sampler_kwargs:
        kwargs = dm.trainer.distributed_sampler_kwargs
        sampler = _get_distributed_sampler(loader, shuffle=True, overfit_batches=0, **kwargs)
        loader = _update_dataloader(loader, sampler)
    return loader


def epochs(dm) -> list[list[torch.Tensor]]:
    """Each epoch's batches as the step receives them (flipped, in [-1, 1]), from seed 0."""
    torch.manual_seed(0)
    loader = as_lightning_prepares(dm, dm.train_dataloader())
    seen = []
    for epoch in range(EPOCHS):
        _set_sampler_epoch(loader, epoch)  # what Lightning's fit loop calls
        seen.append([dm.on_after_batch_transfer(batch, 0) for batch in loader])
    seen.append([torch.random.get_rng_state()])  # and the global stream left the same
    return seen


@pytest.mark.parametrize("replicas", [1, 2])
def test_same_batches_in_the_same_order_as_the_loader(replicas: int) -> None:
    for rank in range(replicas):
        loader_dm, device_dm = (datamodule(s, rank, replicas) for s in (False, True))
        assert isinstance(loader_dm.train_dataloader(), DataLoader)
        assert isinstance(device_dm.train_dataloader(), DeviceBatches)
        expected, got = epochs(loader_dm), epochs(device_dm)
        assert len(got[0]) == len(device_dm.train_dataloader()) == N // replicas // BATCH
        for want, have in zip(expected, got, strict=True):
            assert len(want) == len(have) and all(map(torch.equal, want, have))
        assert not torch.equal(got[0][0], got[1][0])  # a new order each epoch


def test_ranks_shards_are_disjoint_and_cover_the_set() -> None:
    loaders = [datamodule(True, rank, 2).train_dataloader() for rank in range(2)]
    orders = []
    for epoch in range(EPOCHS):
        shards = []
        for loader in loaders:
            _set_sampler_epoch(loader, epoch)
            shards.append(list(loader.sampler))
        assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == [*range(N)]
        orders.append(shards[0])
    assert orders[0] != orders[1]  # set_epoch is honoured


class CopyCounter(TorchFunctionMode):
    """Records every call that copies an image tensor (uint8) or moves it between devices."""

    COPIES = {"to", "cuda", "copy_", "pin_memory", "clone", "contiguous", "cpu"}

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.COPIES and args and getattr(args[0], "dtype", None) == torch.uint8:
            self.copies.append(name)
        return func(*args, **(kwargs or {}))


def test_batches_come_from_the_device_set_without_loader_or_copy(monkeypatch) -> None:
    dm = datamodule(True)
    loader = dm.train_dataloader()
    assert not isinstance(loader, DataLoader) and dm.device_images.device == torch.device("cpu")
    monkeypatch.setattr(base.UInt8Images, "__getitems__", lambda *a: pytest.fail("loader used"))
    with CopyCounter() as counter:
        batches = list(loader)
    assert counter.copies == [] and len(batches) == N // BATCH
    assert all(b.device == dm.device_images.device and b.dtype == torch.uint8 for b in batches)


def test_auto_holds_a_set_that_fits_the_device_memory_share(monkeypatch) -> None:
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(device_batches, "device_memory", lambda device: 1000)
    assert holds_on_device("auto", gpu, 250, 0.25) and not holds_on_device("auto", gpu, 251, 0.25)
    assert holds_on_device("auto", gpu, 500, 0.5)
    monkeypatch.undo()
    cpu = torch.device("cpu")
    assert not holds_on_device("auto", cpu, 1, 1.0)  # nothing to gain on the CPU: the loader
    assert holds_on_device(True, cpu, 10**15, 0.01) and not holds_on_device(False, gpu, 1, 1.0)
    assert isinstance(datamodule("auto").train_dataloader(), DataLoader)
    with pytest.raises(ValueError, match="on_device must be auto, true or false"):
        TensorImages(images(), on_device="yes")


class Recorder(pl.LightningModule):
    """Keeps every training batch it is given; counts validation images."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.batches: list[torch.Tensor] = []
        self.validated = 0

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.batches.append(batch.clone())
        return self.weight * 0

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.validated += len(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(on_device: bool) -> Recorder:
    pl.seed_everything(0)
    dm = TensorImages(images(), batch_size=BATCH, flip=True, on_device=on_device)
    dm.num_val_images = 12
    module = Recorder()
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", limit_train_batches=0.6, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert trainer.num_training_batches == 3  # 0.6 of len(): 5 batches an epoch
    loader = trainer.train_dataloader
    assert isinstance(loader, DeviceBatches) == on_device
    return module


def test_lightning_trains_and_validates_from_the_device_set_as_from_the_loader() -> None:
    device, loader = fit(True), fit(False)
    assert len(device.batches) == 6 and device.validated == 2 * 12
    assert all(map(torch.equal, device.batches, loader.batches))


@pytest.mark.gpu
@requires_cuda
def test_auto_holds_a_small_set_on_the_gpu() -> None:
    dm = datamodule("auto", device="cuda")
    loader = dm.train_dataloader()
    assert isinstance(loader, DeviceBatches) and dm.device_images.is_cuda
    assert all(batch.is_cuda for batch in loader)


@pytest.mark.slow
def test_ddp_training_from_the_device_set_equals_the_loaders(tmp_path) -> None:
    """Two gloo ranks through `train(cfg)`: the same losses whichever path serves the batches."""
    from hydra.core.global_hydra import GlobalHydra

    from dcgan_lightning.train import train
    from tests.conftest import compose_config, tiny

    metrics = []
    for on_device in ("true", "false"):
        overrides = [
            "trainer=ddp_sim",
            "logger=csv",
            "metrics=none",
            "data=shapes",
            "data.flip=true",
        ]
        cfg = tiny(
            compose_config([*overrides, f"data.on_device={on_device}"], tmp_path / on_device)
        )
        metrics.append({k: float(v) for k, v in train(cfg).items()})
        GlobalHydra.instance().clear()
    assert metrics[0] == metrics[1] and "train/loss_d_step" in metrics[0]
