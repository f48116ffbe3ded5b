"""Conditional GAN: labels from every datamodule, the conditional nets, a run that learns its
classes (all-red images labelled 0, all-blue 1), generation by class, resume, and DDP."""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import open_dict
from PIL import Image

from dcgan_lightning.callbacks.overfitting import OverfittingRatio
from dcgan_lightning.data import cache, download
from dcgan_lightning.data.base import fixed_order
from dcgan_lightning.data.celeba import CelebADataModule
from dcgan_lightning.data.device_batches import DeviceBatches
from dcgan_lightning.data.fashion_mnist import CLASSES, FashionMNISTDataModule
from dcgan_lightning.data.image_folder import ImageFolderDataModule
from dcgan_lightning.data.shapes import SHAPES, ShapesDataModule
from dcgan_lightning.errors import UserError
from dcgan_lightning.generate import generate
from dcgan_lightning.generation import load_generator
from dcgan_lightning.models.class_labels import ClassLabels
from dcgan_lightning.models.conditional import ProjectionDiscriminator
from dcgan_lightning.models.gan_module import GAN
from dcgan_lightning.train import train
from tests.conftest import compose_config, fast_ranks, tiny
from tests.test_data import write_celeba, write_idx, write_images

RED, BLUE = (230, 20, 20), (20, 20, 230)


def write_solid(folder: Path, n: int, colour: tuple[int, int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (40, 40), colour).save(folder / f"{i:03d}.png")


def first_batch(dm):
    return dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)


# -- labels from the datamodules ----------------------------------------------------------------
def test_shapes_are_labelled_by_their_shape() -> None:
    dm = ShapesDataModule(num_images=48, image_size=32, batch_size=48, labels=True)
    dm.setup("fit")
    assert dm.class_names == list(SHAPES) and dm.labels.dtype == torch.int64
    plain = ShapesDataModule(num_images=48, image_size=32, batch_size=48)
    plain.setup("fit")
    assert torch.equal(dm.images, plain.images)  # labels change no pixel
    # Filled share of the shape's bounding box: circle ~0.79, square ~1, triangle ~0.5.
    bright = dm.images.float().mean(1) > 100
    rows, cols = bright.any(2), bright.any(1)
    box = rows.sum(1) * cols.sum(1)
    fill = bright.flatten(1).sum(1) / box
    for c, (lo, hi) in enumerate([(0.7, 0.88), (0.9, 1.01), (0.4, 0.62)]):
        assert ((fill[dm.labels == c] > lo) & (fill[dm.labels == c] < hi)).all(), SHAPES[c]
    images, labels = first_batch(dm)
    assert images.dtype == torch.float32 and images.min() >= -1  # only the images are converted
    assert labels.dtype == torch.int64 and sorted(set(labels.tolist())) == [0, 1, 2]
    assert isinstance(first_batch(plain), torch.Tensor)  # without labels: a plain tensor


def test_fashion_mnist_labels_come_from_the_idx1_file(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((20, 28, 28), np.uint8))
    labels = np.arange(20, dtype=np.uint8) % 10
    (raw / "train-labels-idx1-ubyte").write_bytes(
        b"\x00\x00\x08\x01" + (20).to_bytes(4, "big") + labels.tobytes()
    )
    dm = FashionMNISTDataModule(root=tmp_path, image_size=32, channels=1, batch_size=4,
                                labels=True, download=False)  # fmt: skip
    dm.setup("fit")
    assert dm.class_names == list(CLASSES) and dm.class_names[1] == "Trouser"
    assert dm.labels.tolist() == labels.tolist() and dm.class_counts == [2] * 10


def test_folder_classes_are_its_subfolders_through_the_cache(tmp_path: Path) -> None:
    write_solid(tmp_path / "imgs" / "red", 3, RED)
    write_solid(tmp_path / "imgs" / "blue", 2, BLUE)
    write_images(tmp_path / "imgs" / "green", 1)
    (tmp_path / "imgs" / "red" / "broken.png").write_bytes(b"not a png")
    kwargs = {"root": tmp_path / "imgs", "image_size": 32, "batch_size": 2,
              "cache_dir": tmp_path / "cache"}  # fmt: skip
    dm = ImageFolderDataModule(labels=True, classes=["red", "blue"], **kwargs)
    dm.setup("fit")
    assert dm.class_names == ["red", "blue"] and dm.labels.tolist() == [1, 1, 0, 0, 0]  # path order
    red = dm.images[dm.labels == 0].float().mean((0, 2, 3))
    assert red[0] > 200 and red[2] < 40  # each label sits with its own images
    cache.clear_memory()  # a new process: labels come back from the disk cache
    again = ImageFolderDataModule(labels=True, classes=["red", "blue"], **kwargs)
    again.setup("fit")
    assert torch.equal(again.labels, dm.labels) and torch.equal(again.images, dm.images)
    plain = ImageFolderDataModule(**kwargs)
    plain.setup("fit")
    everything = ImageFolderDataModule(labels=True, **kwargs)
    everything.setup("fit")
    keys = {m._key.filename for m in (dm, plain, everything)}
    assert len(keys) == 3 and len(sorted((tmp_path / "cache").glob("*.pt"))) == 3
    assert everything.class_names == ["blue", "green", "red"]
    with pytest.raises(UserError, match=r"no folder \['purple'\].*'blue', 'green', 'red'"):
        ImageFolderDataModule(labels=True, classes=["purple"], **kwargs).setup()


def test_ranks_other_than_0_wait_for_its_download_to_list_classes(tmp_path, monkeypatch) -> None:
    """torchrun starts every rank at once: rank 1 builds its model while rank 0 downloads."""
    root = tmp_path / "artworks"
    kaggle = {"handle": "ikarus777/best-artworks-of-all-time"}
    dm = ImageFolderDataModule(root=root, folder="images", kaggle=kaggle, labels=True, batch_size=1)
    monkeypatch.setattr(dm, "fetch", lambda: pytest.fail("only rank 0 downloads"))
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    monkeypatch.setattr(download, "POLL_SECONDS", 0.05)

    def rank_0_download() -> None:  # as download.link_or_copy: the whole set appears at once
        time.sleep(0.3)
        write_solid(tmp_path / "cache" / "images" / "Rembrandt", 1, RED)
        write_solid(tmp_path / "cache" / "images" / "Pablo_Picasso", 1, BLUE)
        (tmp_path / "cache").rename(root)

    thread = threading.Thread(target=rank_0_download)
    thread.start()
    assert dm.class_names == ["Pablo_Picasso", "Rembrandt"]
    thread.join()
    late = ImageFolderDataModule(root=tmp_path / "never", kaggle=kaggle, labels=True, batch_size=1)
    monkeypatch.setattr(late, "fetch", lambda: pytest.fail("only rank 0 downloads"))
    monkeypatch.setattr(download.wait_for_rank_zero, "__defaults__", (0.2,))
    with pytest.raises(UserError, match=r"rank 1 waited 0 min for rank 0.*every node first"):
        _ = late.class_names


def test_celeba_attribute_makes_two_classes(tmp_path: Path) -> None:
    write_celeba(tmp_path, [0, 0, 0, 1])
    names = ["5_o_Clock_Shadow", "Smiling"]
    rows = [f"{i + 1:06d}.jpg {-1} {1 if i % 2 else -1}" for i in range(4)]
    (tmp_path / "list_attr_celeba.txt").write_text("\n".join(["4", " ".join(names), *rows]))
    dm = CelebADataModule(root=tmp_path, image_size=32, batch_size=2, cache_dir=None,
                          labels=True, attribute="Smiling")  # fmt: skip
    dm.setup("fit")
    assert dm.class_names == ["not_Smiling", "Smiling"] and dm.labels.tolist() == [0, 1, 0]
    with pytest.raises(UserError, match=r"Bald.*Smiling"):
        CelebADataModule(root=tmp_path, labels=True, attribute="Bald", cache_dir=None).setup()


def test_device_batches_carry_their_labels() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2)
    labels = torch.arange(10) * 10
    batches = DeviceBatches(images, torch.randperm(10).tolist(), 4, True, labels=labels)
    for x, y in batches:
        assert y.dtype == torch.int64 and torch.equal(x[:, 0, 0, 0].long() * 10, y)


# -- the conditional nets -------------------------------------------------------------------------
def conditional_gan(**conditional) -> GAN:
    opt = torch.optim.Adam
    return GAN(32, 3, {"features": 8}, {"features": 8, "spectral_norm": True}, opt, opt, z_dim=8,
               num_classes=3, conditional=conditional, num_fixed_samples=12)  # fmt: skip


@pytest.mark.parametrize("conditioning", ["cbn", "concat"])
def test_a_fixed_z_gives_other_images_for_other_labels(conditioning: str) -> None:
    gan = conditional_gan(generator=conditioning)
    if conditioning == "cbn":  # at init every class's scale and shift are equal: make them not
        torch.nn.init.normal_(gan.generator.main[0].shift.weight)
    z = torch.randn(1, 8).expand(3, 8)
    images = gan.generate(z, torch.arange(3))
    scale = images.abs().max()  # untrained, eval mode: small images, so compare relatively
    assert scale > 0 and all((images[i] - images[i + 1]).abs().max() > 0.05 * scale for i in (0, 1))


def test_conditional_batchnorm_survives_the_sync_batchnorm_conversion() -> None:
    """`trainer.sync_batchnorm=true`: Lightning converts every BatchNorm to SyncBatchNorm. The
    statistics are then synced, but each class keeps its own scale and shift."""
    gan = conditional_gan(generator="cbn")
    torch.nn.init.normal_(gan.generator.main[0].shift.weight)
    torch.nn.init.normal_(gan.generator.main[0].scale.weight, 1.0, 0.5)
    g = torch.nn.SyncBatchNorm.convert_sync_batchnorm(gan.generator).eval()
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in g.modules())
    z = torch.randn(1, 8).expand(3, 8)
    images = g(z, torch.arange(3))
    scale = images.abs().max()
    assert scale > 0 and all((images[i] - images[i + 1]).abs().max() > 0.05 * scale for i in (0, 1))
    g.train()  # (SyncBatchNorm without a process group normalises as BatchNorm does)
    g(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).square().mean().backward()
    embeddings = [m for m in g.modules() if isinstance(m, torch.nn.Embedding)]
    assert embeddings and all(e.weight.grad is not None for e in embeddings)
    assert all(e.weight.grad.abs().sum() > 0 for e in embeddings)


def test_conditional_batchnorm_loads_checkpoints_of_its_old_layout() -> None:
    """Before the normalisation moved to a child BatchNorm its statistics sat on the layer."""
    new = conditional_gan(generator="cbn").generator
    old = {k.replace(".norm.", "."): v for k, v in new.state_dict().items()}
    assert old.keys() != new.state_dict().keys()
    old["main.0.running_mean"] = torch.full_like(old["main.0.running_mean"], 0.5)
    new.load_state_dict(old)
    assert torch.equal(new.main[0].norm.running_mean, old["main.0.running_mean"])


def test_projection_d_output_changes_with_y() -> None:
    d = conditional_gan().discriminator.eval()
    x = torch.randn(1, 3, 32, 32).expand(3, -1, -1, -1)
    out = d(x, torch.arange(3))
    assert out.shape == (3,) and len(set(out.tolist())) == 3
    assert hasattr(d.embed, "parametrizations")  # spectral norm on the embedding too


def test_fixed_grid_has_a_row_per_class_with_the_same_z() -> None:
    gan = conditional_gan()
    assert gan.fixed_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(gan.fixed_noise[:4], gan.fixed_noise[4:8])
    images, nrow = gan.fixed_samples()
    assert images.shape == (12, 3, 32, 32) and nrow == 4
    many = ClassLabels(50)
    assert many.grid_classes().tolist()[:3] == [0, 3, 7] and len(many.grid_classes()) == 16


def test_fake_labels_follow_the_data_or_are_uniform() -> None:
    labels = ClassLabels(3)
    labels.use_data(["a", "b", "c"], [700, 300, 0])
    drawn = labels.sample(20000, torch.Generator().manual_seed(0))
    share = torch.bincount(drawn, minlength=3) / 20000
    assert abs(share[0] - 0.7) < 0.02 and share[2] == 0
    uniform = ClassLabels(3, fake_labels="uniform")
    uniform.use_data(["a", "b", "c"], [700, 300, 0])
    share = torch.bincount(uniform.sample(20000, torch.Generator().manual_seed(0))) / 20000
    assert (share - 1 / 3).abs().max() < 0.02


def test_conditional_model_refuses_unlabelled_data(make_cfg) -> None:
    cfg = make_cfg("model=cdcgan", "logger=none", "callbacks=none", "metrics=none")
    with pytest.raises(Exception, match=r"data\.labels=true"):
        train(cfg)


# -- a run that learns red for 0 and blue for 1 ---------------------------------------------------
def colour_cfg(root: Path, run_dir: Path, epochs: int, *overrides: str):
    cfg = tiny(compose_config(["model=cdcgan", "data=image_folder", f"data.root={root}",
                               "data.labels=true", "data.cache_dir=null", "logger=csv",
                               "metrics=none", *overrides], run_dir))  # fmt: skip
    with open_dict(cfg):
        cfg.trainer.limit_train_batches, cfg.trainer.max_epochs = None, epochs
        cfg.data.image_size = 32
        cfg.model.z_dim = 16
    return cfg


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("colours")
    write_solid(root / "a_red", 32, RED)
    write_solid(root / "b_blue", 32, BLUE)
    run_dir = tmp_path_factory.mktemp("colour_run")
    cfg = colour_cfg(root, run_dir, 15, "model.optimizer_g.lr=5e-3", "model.optimizer_d.lr=2e-3")
    train(cfg)
    GlobalHydra.instance().clear()
    return root, run_dir / "checkpoints" / "last.ckpt"


def run_generate(ckpt: Path, out: Path, *overrides: str) -> Path:
    GlobalHydra.instance().clear()
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose("generate", overrides=[f"ckpt_path={ckpt}", f"out={out}", *overrides])
    return generate(cfg)


def mean_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).mean((0, 1))


def test_label_0_draws_red_and_label_1_blue(colour_run, tmp_path: Path) -> None:
    _, ckpt = colour_run
    g = load_generator(ckpt)
    assert g.class_names == ["a_red", "b_blue"]
    z = g.sample_noise(16, torch.Generator().manual_seed(0))
    for label, (hot, cold) in ((0, (0, 2)), (1, (2, 0))):
        rgb = g(z, torch.full((16,), label)).mean((0, 2, 3))  # seen here: +0.63 and +0.18
        assert rgb[hot] > rgb[cold] + 0.1, (label, rgb)
    out = run_generate(ckpt, tmp_path / "red", "label=a_red", "num_images=3")
    assert sorted(p.name for p in out.glob("*.png")) == [f"a_red_00000{i}.png" for i in range(3)]
    red = mean_rgb(out / "a_red_000000.png")
    assert red[0] > red[2] + 12
    by_index = run_generate(ckpt, tmp_path / "one", "label=1", "num_images=1")
    blue = mean_rgb(by_index / "b_blue_000000.png")
    assert blue[2] > blue[0] + 12


def test_generation_by_class_names_files_grids_and_refuses_unknown(colour_run, tmp_path) -> None:
    _, ckpt = colour_run
    out = run_generate(ckpt, tmp_path / "both", "labels=[b_blue,a_red]", "num_images=2")
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["a_red_000000.png", "a_red_000001.png", "b_blue_000000.png",
                     "b_blue_000001.png"]  # fmt: skip
    grid = run_generate(ckpt, tmp_path / "grid", "grid=true", "num_images=3") / "grid.png"
    image = np.asarray(Image.open(grid).convert("RGB"), dtype=np.float64)
    assert image.shape == (2 + 2 * 34, 2 + 3 * 34, 3)  # a row per class, num_images a row
    top, bottom = image[2:34].mean((0, 1)), image[36:68].mean((0, 1))
    assert top[0] > top[2] and bottom[2] > bottom[0]
    walk = run_generate(ckpt, tmp_path / "walk", "interpolate=true", "label=b_blue")
    assert mean_rgb(walk / "linear.png")[2] > mean_rgb(walk / "linear.png")[0]
    with pytest.raises(ValueError, match=r"unknown label 'green'.*0=a_red, 1=b_blue"):
        run_generate(ckpt, tmp_path / "bad", "label=green")
    with pytest.raises(ValueError, match="within one class"):
        run_generate(ckpt, tmp_path / "walks", "interpolate=true")


def test_checkpoint_keeps_class_names_and_counts(colour_run) -> None:
    _, ckpt = colour_run
    saved = torch.load(ckpt, weights_only=True)
    assert saved["classes"] == {"names": ["a_red", "b_blue"], "counts": [32, 32]}
    assert torch.allclose(saved["state_dict"]["labels.probs"], torch.tensor([0.5, 0.5]))


def test_conditional_run_resumes(colour_run, tmp_path: Path) -> None:
    root, ckpt = colour_run
    cfg = colour_cfg(root, tmp_path / "resumed", 16, f"ckpt_path={ckpt}")
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    before = torch.load(ckpt, weights_only=True)["global_step"]
    assert resumed["global_step"] == before + 2 * 4 and "train/loss_g_epoch" in metrics
    assert resumed["classes"]["names"] == ["a_red", "b_blue"]


def test_d_and_g_steps_change_only_their_own_net(make_cfg) -> None:
    cfg = make_cfg("model=cdcgan", "data.labels=true", "callbacks=none", "logger=none",
                   "metrics=none", "model.discriminator.spectral_norm=true")  # fmt: skip
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, image_size=32, channels=3, num_classes=dm.num_classes)
    trainer = instantiate(cfg.trainer, logger=False)
    trainer.fit(model, datamodule=dm)  # sets up optimizers, label frequencies
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    _, opt_d = model.optimizers()
    model._log_train = lambda logs: None  # outside the fit loop: nothing to log into

    def params(prefix: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.named_parameters() if k.startswith(prefix)}

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    g0, d0 = params("generator."), params("discriminator.")
    model.hparams.d_steps_per_g_step = 10**9  # this batch: a D step only
    model.training_step(batch, 0)
    g1, d1 = params("generator."), params("discriminator.")
    assert same(g0, g1) and not same(d0, d1)

    after_d_step, step = {}, opt_d.step
    opt_d.step = lambda *a, **k: (step(*a, **k), after_d_step.update(params("discriminator.")))
    model.hparams.d_steps_per_g_step = 1  # a D step, then a G step
    model.training_step(batch, 1)
    assert same(after_d_step, params("discriminator.")) and not same(g1, params("generator."))


@pytest.mark.slow
def test_two_rank_conditional_run_stays_in_sync(tmp_path: Path) -> None:
    cfg = tiny(compose_config(["trainer=ddp_sim", fast_ranks(), "model=cdcgan", "data.labels=true",
                               "logger=csv", "metrics=none"], tmp_path / "run"))  # fmt: skip
    with open_dict(cfg):
        cfg.callbacks.record = {"_target_": "tests.test_ddp.RecordRank", "dirpath": str(tmp_path)}
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["classes"]["names"] == list(SHAPES) and len(saved["rng_states"]) == 2
    assert np.isfinite(metrics["train/loss_d_epoch"])
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["wrappers"] == {"G": "DistributedDataParallel", "D": "DistributedDataParallel"}
    for name, p in r0["final"].items():  # G(z, y) and D(x, y) through their DDP wrappers
        assert torch.equal(p, r1["final"][name]), f"{name} differs between ranks"
    embed = "discriminator.embed.weight"  # the projection's class embedding learnt
    assert not torch.equal(r0["final"][embed], r0["initial"][embed])
    assert not torch.equal(r0["z"], r1["z"])  # each rank draws its own z (and labels)


def test_labels_follow_the_images_when_some_are_held_out() -> None:
    full = ShapesDataModule(num_images=40, image_size=32, batch_size=8, labels=True)
    held = ShapesDataModule(num_images=40, image_size=32, batch_size=8, labels=True, holdout=8)
    full.setup("fit")
    held.setup("fit")
    order = fixed_order(40)
    assert torch.equal(held.images, full.images[order[:32]])
    assert torch.equal(held.labels, full.labels[order[:32]])
    assert torch.equal(held.holdout_images, full.images[order[32:]])
    assert torch.equal(held.holdout_labels, full.labels[order[32:]])


class SameLabelledHeldOut(ShapesDataModule):
    """Its "held-out" images and classes are its training ones: r_v = 0 for any D."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.holdout_images, self.holdout_labels = self.images.clone(), self.labels.clone()


def r_v_values(make_cfg, dm: ShapesDataModule) -> dict[str, float]:
    dm.setup("fit")
    model = instantiate(
        make_cfg("model=cdcgan").model, image_size=32, channels=3, num_classes=len(SHAPES)
    )
    callback = OverfittingRatio()
    callback.setup(types.SimpleNamespace(datamodule=dm), model, "fit")
    return callback.compute(model)


def test_r_v_of_a_conditional_d_scores_each_image_with_its_class(make_cfg, monkeypatch) -> None:
    same = r_v_values(
        make_cfg, SameLabelledHeldOut(num_images=24, image_size=32, batch_size=8, labels=True)
    )
    assert same["r_v"] == 0.0 and same["d_generated"] != same["d_train"]
    seen: list[torch.Tensor] = []
    forward = ProjectionDiscriminator.forward
    monkeypatch.setattr(
        ProjectionDiscriminator, "forward", lambda d, x, y: seen.append(y) or forward(d, x, y)
    )
    dm = ShapesDataModule(num_images=48, image_size=32, batch_size=8, labels=True, holdout=16)
    values = r_v_values(make_cfg, dm)
    gap = values["d_train"] - values["d_generated"]
    assert values["r_v"] == pytest.approx((values["d_train"] - values["d_heldout"]) / gap)
    # D saw the training subset's classes, then the held-out ones for held-out and generated images
    train_y, heldout_y, generated_y = (torch.cat(seen[i : i + 2]) for i in (0, 2, 4))
    assert torch.equal(heldout_y, dm.holdout_labels) and torch.equal(generated_y, dm.holdout_labels)
    assert all(bool((dm.labels == y).any()) for y in train_y)


def test_a_conditional_run_with_a_holdout_logs_r_v(make_cfg) -> None:
    metrics = train(make_cfg("model=cdcgan", "data.labels=true", "data.holdout=8", "logger=csv"))
    assert np.isfinite(metrics["val/r_v"])


def test_swd_is_logged_per_class_with_its_mean(make_cfg) -> None:
    metrics = train(make_cfg("model=cdcgan", "data.labels=true", "logger=csv"))
    per_class = [metrics[f"val/swd/{shape}"] for shape in SHAPES]
    assert all(v > 0 for v in per_class) and "val/swd" in metrics
    assert metrics["val/swd_class_mean"] == pytest.approx(sum(per_class) / 3, rel=1e-5)
    assert "val/fid/circle" not in metrics  # no Inception weights here: no intra-FID


# -- a conditional run on shapes draws the shape asked for -------------------------------------
FILL = {"circle": 3.14159 / 4, "square": 1.0, "triangle": 0.5}  # shape area / bounding-box area


def fill_ratio(images: torch.Tensor) -> torch.Tensor:
    """Per uint8 image: the bright shape's pixels over its bounding box's (shapes are bright on a
    dark background; a pixel is the shape's when its brightest channel is past the midpoint of
    the image's darkest and brightest)."""
    light = images.float().amax(1)  # (N, H, W)
    low, high = light.flatten(1).aminmax(dim=1)
    mask = light > ((low + high) / 2).view(-1, 1, 1)
    ratios = []
    for m in mask:
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        ratios.append(m.sum() / box)
    return torch.stack(ratios).float()


def shape_of(images: torch.Tensor) -> torch.Tensor:
    """The index in SHAPES of the shape whose fill ratio is nearest each image's."""
    targets = torch.tensor([FILL[name] for name in SHAPES])
    return (fill_ratio(images).view(-1, 1) - targets).abs().argmin(1)


def fraction_drawn_as(images: torch.Tensor, shape: str) -> float:
    return float((shape_of(images) == SHAPES.index(shape)).float().mean())


def test_the_shape_measure_names_the_shapes_of_real_images() -> None:
    dm = ShapesDataModule(num_images=512, image_size=32, batch_size=1, labels=True)
    dm.setup()
    assert float((shape_of(dm.images) == dm.labels).float().mean()) > 0.97  # 0.99 seen
    for c, name in enumerate(SHAPES):
        assert float(fill_ratio(dm.images[dm.labels == c]).median()) == pytest.approx(
            FILL[name], abs=0.04
        )


@pytest.mark.slow
def test_a_conditional_shapes_run_draws_triangles_where_asked(tmp_path: Path) -> None:
    """1,920 batches of features-32 nets (64 s on a 2-core CPU with bf16, 102 s on one thread in
    fp32): by then the triangle row is triangles and the other rows are not; circles and squares
    both come out as rounded squares (not told apart). Features 16 drew 64% triangles with 2
    threads and bf16, 78% with 1: too close to the bar; features 24, 79-89% and a lead of 0.29."""
    cfg = compose_config(
        [
            "model=cdcgan",
            "data.labels=true",
            "data.image_size=32",
            "data.num_images=1024",
            "data.batch_size=32",
            "trainer.max_epochs=60",
            "model.generator.features=32",
            "model.discriminator.features=32",
            "model.optimizer_g.lr=5e-4",
            "metrics=none",
            "logger=csv",
            "~callbacks.progress_bar",
            "++trainer.enable_progress_bar=false",
        ],
        tmp_path / "run",
    )
    train(cfg)
    g = load_generator(tmp_path / "run" / "checkpoints" / "last.ckpt")
    z = g.sample_noise(256, torch.Generator().manual_seed(0))
    drawn = {
        name: ((g(z, torch.full((256,), c)) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        for c, name in enumerate(SHAPES)
    }
    # Seen over 1 and 2 threads, bf16 and fp32, seeds 42 and 1: 93-98% of label=triangle samples
    # measure as triangles, 39-61 points more than the circles' or squares' (a blurred corner
    # makes a blob measure low), and their median fill is 0.15-0.19 lower.
    triangles = {name: fraction_drawn_as(images, "triangle") for name, images in drawn.items()}
    assert triangles["triangle"] > 0.7
    assert triangles["triangle"] > max(triangles["circle"], triangles["square"]) + 0.3
    fill = {name: float(fill_ratio(images).median()) for name, images in drawn.items()}
    assert fill["triangle"] < min(fill["circle"], fill["square"]) - 0.1
