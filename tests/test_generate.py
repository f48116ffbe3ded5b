"""Generation from a tiny run's checkpoint: files, zip, seeds, latent walks, EMA, bad input."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from dcgan_lightning import load_generator
from dcgan_lightning.errors import UserError
from dcgan_lightning.generate import RECORD, check_kaggle_zip, generate
from dcgan_lightning.generation import CheckpointError, TrainedGenerator
from dcgan_lightning.generation.images import GRID_PAD
from dcgan_lightning.generation.latent import latent_walk
from dcgan_lightning.models.gan_module import GAN
from dcgan_lightning.models.generator import Generator
from dcgan_lightning.train import train
from tests.conftest import REPO, compose_config, requires_cuda, tiny

SIDE = 32  # the shapes dataset's image_size, so the tiny model's


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of a tiny run with EMA at decay 0.5: its EMA weights differ from the raw ones.

    Two steps leave BatchNorm's running statistics near their initial values, so in eval mode the
    images are near-uniform grey (|x| < 0.002). The output layer of both generators is scaled up
    alike, so that images differ visibly and pixel comparisons mean something.
    """
    run_dir = tmp_path_factory.mktemp("train") / "run"
    train(tiny(compose_config(["model.ema={decay:0.5,start_step:0}"], run_dir)))
    GlobalHydra.instance().clear()
    path = run_dir / "checkpoints" / "last.ckpt"
    data = torch.load(path, weights_only=True)
    state = data["state_dict"]
    for prefix in ("generator.main.", "ema_generator.module.main."):
        weights = [k for k in state if k.startswith(prefix) and k.endswith(".weight")]
        state[max(weights, key=lambda k: int(k.split(".")[-2]))] *= 1000
    torch.save(data, path)
    return path


@pytest.fixture(scope="module")
def plain_ckpt(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint as a run without EMA would have written it."""
    data = torch.load(ckpt, weights_only=True)
    data["hyper_parameters"]["ema"] = None
    data["state_dict"] = {
        k: v for k, v in data["state_dict"].items() if not k.startswith("ema_generator.")
    }
    path = tmp_path_factory.mktemp("plain") / "plain.ckpt"
    torch.save(data, path)
    return path


def run(ckpt: Path, out: Path | None, *overrides: str) -> Path:
    """`python -m dcgan_lightning.generate ckpt_path=... out=... *overrides`, in process."""
    GlobalHydra.instance().clear()
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose(
            "generate", overrides=[f"ckpt_path={ckpt}", f"out={out or 'null'}", *overrides]
        )
    return generate(cfg)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_writes_n_files_of_the_model_size_and_mode(ckpt: Path, tmp_path: Path) -> None:
    out = run(ckpt, tmp_path / "png", "num_images=5", "batch_size=2")
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    for f in files:
        with Image.open(f) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIDE, SIDE))
    assert pixels(files[0]).std() > 10  # a picture, not a blank

    out = run(ckpt, tmp_path / "jpg", "num_images=3", "format=jpg", "size=48")
    assert sorted(p.name for p in out.iterdir()) == [f"{i:06d}.jpg" for i in range(3)] + [RECORD]
    for f in sorted(out.glob("*.jpg")):
        with Image.open(f) as image:
            assert (f.suffix, image.format, image.mode, image.size) == (
                ".jpg",
                "JPEG",
                "RGB",
                (48, 48),
            )


def test_zip_holds_n_jpegs_of_the_asked_size(
    ckpt: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = run(
        ckpt,
        tmp_path / "unused",
        f"zip={tmp_path}/images.zip",
        "size=64",
        "num_images=7",
        "kaggle=false",
    )
    assert dest == tmp_path / "images.zip"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.zip"]  # no folder, no .partial
    with zipfile.ZipFile(dest) as zf:
        names = zf.namelist()
        assert names == [f"{i:06d}.jpg" for i in range(7)]
        for name in names:
            with zf.open(name) as f, Image.open(f) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
    assert "upscaling them to 64 px with Lanczos" in caplog.text

    caplog.clear()
    run(ckpt, None, f"zip={tmp_path}/small.zip", "size=16", "num_images=1", "kaggle=false")
    assert "upscaling" not in caplog.text  # downscaling loses nothing to warn about


def test_same_seed_same_bytes_whatever_the_batch_size(ckpt: Path, tmp_path: Path) -> None:
    a = run(ckpt, tmp_path / "a", "seed=3", "num_images=6", "batch_size=4")
    b = run(ckpt, tmp_path / "b", "seed=3", "num_images=6", "batch_size=5")
    c = run(ckpt, tmp_path / "c", "seed=4", "num_images=6")
    for name in (f"{i:06d}.png" for i in range(6)):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    # Zips are byte-identical too (fixed entry dates).
    za = run(ckpt, None, f"zip={tmp_path}/a.zip", "seed=3", "num_images=2", "kaggle=false")
    zb = run(ckpt, None, f"zip={tmp_path}/b.zip", "seed=3", "num_images=2", "kaggle=false")
    assert za.read_bytes() == zb.read_bytes()


def test_files_are_the_generator_output_for_the_seed(ckpt: Path, tmp_path: Path) -> None:
    """Image i is G(z_i), z_i the i-th draw of torch.Generator().manual_seed(seed)."""
    out = run(ckpt, tmp_path, "seed=5", "num_images=3")
    generator = load_generator(ckpt)
    with torch.no_grad():
        images = generator(generator.sample_noise(3, torch.Generator().manual_seed(5)))
    expected = ((images + 1) * 127.5).round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
    for i in range(3):
        assert np.abs(pixels(out / f"{i:06d}.png") - expected[i]).max() <= 1


def test_walk_ends_are_the_images_of_the_two_seeds(ckpt: Path, tmp_path: Path) -> None:
    out = run(ckpt, tmp_path / "walk", "interpolate=true", "walk_seeds=[3,7]", "walk_steps=5")
    assert sorted(p.name for p in out.iterdir()) == [
        RECORD,
        "linear.gif",
        "linear.png",
        "slerp.gif",
        "slerp.png",
    ]
    ends = {
        s: pixels(run(ckpt, tmp_path / f"s{s}", f"seed={s}", "num_images=1") / "000000.png")
        for s in (3, 7)
    }

    def cell(grid: np.ndarray, col: int) -> np.ndarray:
        x = GRID_PAD + col * (SIDE + GRID_PAD)
        return grid[GRID_PAD : GRID_PAD + SIDE, x : x + SIDE]

    grids = {m: pixels(out / f"{m}.png") for m in ("linear", "slerp")}
    for grid in grids.values():
        assert grid.shape == (GRID_PAD + SIDE + GRID_PAD, GRID_PAD + 5 * (SIDE + GRID_PAD), 3)
        # Off by at most one level: batches of different sizes may round differently.
        assert np.abs(cell(grid, 0) - ends[3]).max() <= 1
        assert np.abs(cell(grid, 4) - ends[7]).max() <= 1
    assert not np.array_equal(cell(grids["linear"], 2), cell(grids["slerp"], 2))
    with Image.open(out / "linear.gif") as gif:
        assert gif.n_frames == 2 * 5 - 2  # there and back, ends once


def test_latent_walk_passes_every_anchor() -> None:
    anchors = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    for method in ("linear", "slerp"):
        walk = latent_walk(anchors, 6, method)
        assert walk.shape == (2, 6, 16)
        assert torch.equal(walk[:, 0], anchors[:2]) and torch.equal(walk[:, -1], anchors[1:])
    # Between anchors of equal norm the arc keeps the norm; the chord dips inside.
    a, b = anchors[0], anchors[1] / anchors[1].norm() * anchors[0].norm()
    mid = {m: latent_walk(torch.stack([a, b]), 3, m)[0, 1] for m in ("linear", "slerp")}
    assert torch.isclose(mid["slerp"].norm(), a.norm(), rtol=1e-5)
    assert mid["linear"].norm() < 0.9 * a.norm()


def test_overwrite_guard(ckpt: Path, tmp_path: Path) -> None:
    out = run(ckpt, tmp_path / "out", "num_images=4")
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="overwrite=true"):
        run(ckpt, out, "num_images=2", "seed=1")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    run(ckpt, out, "num_images=2", "seed=1", "overwrite=true")
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(after) == ["000000.png", "000001.png", RECORD, "notes.txt"]  # stale ones gone
    assert after["000000.png"] != before["000000.png"] and after["notes.txt"] == b"mine"

    zip_path = run(ckpt, None, f"zip={tmp_path}/images.zip", "num_images=2", "kaggle=false")
    zipped = zip_path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=true"):
        run(ckpt, None, f"zip={zip_path}", "num_images=3", "kaggle=false")
    assert zip_path.read_bytes() == zipped
    run(ckpt, None, f"zip={zip_path}", "num_images=3", "overwrite=true", "kaggle=false")
    assert len(zipfile.ZipFile(zip_path).namelist()) == 3


def test_default_out_is_under_the_run_dir(ckpt: Path) -> None:
    out = run(ckpt, None, "num_images=1")
    assert out.parent == ckpt.parent.parent / "generated"
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", RECORD]


def test_ema_weights_used_when_present(ckpt: Path, plain_ckpt: Path, tmp_path: Path) -> None:
    adam = partial(torch.optim.Adam)
    model = GAN.load_from_checkpoint(ckpt, map_location="cpu", optimizer_g=adam, optimizer_d=adam)
    z = torch.randn(4, model.hparams.z_dim)
    ema, raw = load_generator(ckpt), load_generator(ckpt, ema=False)
    assert ema.ema and not raw.ema and not ema.training
    with torch.no_grad():
        # The EMA copy; its BatchNorm statistics, estimated in the run (standing_stats.py) and
        # again here, agree to float rounding, which the x1000 output layer magnifies.
        torch.testing.assert_close(ema(z), model.generate(z), atol=1e-4, rtol=0)
        torch.testing.assert_close(raw(z), model.generator.eval()(z))
        assert (ema(z) - raw(z)).abs().max() > 0.01  # the test can tell them apart
        plain = load_generator(plain_ckpt)
        assert not plain.ema
        torch.testing.assert_close(plain(z), raw(z))

    a = run(ckpt, tmp_path / "ema", "num_images=1")
    b = run(ckpt, tmp_path / "raw", "num_images=1", "ema=false")
    assert (a / "000000.png").read_bytes() != (b / "000000.png").read_bytes()


@pytest.mark.parametrize("noise", ["normal", "uniform"])
def test_noise_is_drawn_as_in_training(noise: str) -> None:
    adam = partial(torch.optim.Adam)
    gan = GAN(SIDE, 3, {"features": 8}, {"features": 8}, adam, adam, z_dim=16, noise=noise)
    trained = TrainedGenerator(Generator(16, SIDE, 3, features=8), noise, SIDE, 3)
    for seed in (0, 1):
        expected = gan.sample_noise(1, torch.Generator().manual_seed(seed))
        assert torch.equal(trained.sample_noise(1, torch.Generator().manual_seed(seed)), expected)
    z5 = trained.sample_noise(5, torch.Generator().manual_seed(0))
    assert torch.equal(z5[:3], trained.sample_noise(3, torch.Generator().manual_seed(0)))
    if noise == "uniform":
        assert z5.min() >= -1 and z5.max() <= 1 and z5.min() < 0


@pytest.mark.parametrize("noise", ["normal", "uniform"])
def test_truncated_noise_stays_within_psi(noise: str) -> None:
    trained = TrainedGenerator(Generator(16, SIDE, 3, features=8), noise, SIDE, 3)

    def draw(n: int, truncation: float | None) -> torch.Tensor:
        return trained.sample_noise(n, torch.Generator().manual_seed(0), truncation)

    plain, z = draw(500, None), draw(500, 0.5)
    assert z.abs().max() <= 0.5 and z.abs().max() > 0.45
    assert torch.equal(draw(3, 0.5), z[:3])  # row i is the same however many rows are drawn
    if noise == "uniform":
        assert torch.equal(z, plain * 0.5)
        return
    inside = plain[0].abs() <= 0.5  # the first row: only its outside components are redrawn
    assert torch.equal(z[0][inside], plain[0][inside]) and not torch.equal(z[0], plain[0])
    # N(0, 1) truncated at +/-0.5 has std sqrt(1 - 2 psi phi(psi) / (2 Phi(psi) - 1)) = 0.2836.
    assert z.std().item() == pytest.approx(0.2836, rel=0.02)
    assert torch.equal(draw(500, 10.0), plain)  # no component beyond 10: nothing redrawn


def test_truncation_makes_the_images_and_is_recorded(ckpt: Path, tmp_path: Path) -> None:
    a = run(ckpt, tmp_path / "a", "seed=2", "num_images=5", "batch_size=2", "truncation=0.5")
    b = run(ckpt, tmp_path / "b", "seed=2", "num_images=5", "batch_size=4", "truncation=0.5")
    plain = run(ckpt, tmp_path / "plain", "seed=2", "num_images=5")
    generator = load_generator(ckpt)
    with torch.no_grad():
        z = generator.sample_noise(5, torch.Generator().manual_seed(2), truncation=0.5)
        expected = ((generator(z) + 1) * 127.5).round().clamp(0, 255).permute(0, 2, 3, 1)
    for i in range(5):
        name = f"{i:06d}.png"
        assert (a / name).read_bytes() == (b / name).read_bytes()  # whatever the batch size
        assert (a / name).read_bytes() != (plain / name).read_bytes()
        assert np.abs(pixels(a / name) - expected[i].numpy()).max() <= 1
    record = json.loads((a / RECORD).read_text())
    assert record == {
        "ckpt_path": str(ckpt.resolve()),
        "ema": True,
        "noise": "normal",
        "truncation": 0.5,
        "mode": "files",
        "size": SIDE,
        "seed": 2,
        "num_images": 5,
    }
    assert json.loads((plain / RECORD).read_text())["truncation"] is None

    # Grids and walks carry it inside the image files too; a zip as its comment (images only).
    out = run(ckpt, tmp_path / "grid", "grid=true", "num_images=4", "truncation=0.7")
    with Image.open(out / "grid.png") as image:
        assert json.loads(image.text["comment"])["truncation"] == 0.7
    out = run(ckpt, tmp_path / "walk", "interpolate=true", "truncation=0.7", "format=jpg")
    for name in ("linear.jpg", "slerp.gif"):
        with Image.open(out / name) as image:
            assert json.loads(image.info["comment"])["truncation"] == 0.7
    assert json.loads((out / RECORD).read_text())["walk_seeds"] == [0, 1]
    dest = run(
        ckpt, None, f"zip={tmp_path}/t.zip", "num_images=2", "truncation=0.7", "kaggle=false"
    )
    with zipfile.ZipFile(dest) as zf:
        assert json.loads(zf.comment)["truncation"] == 0.7
        assert zf.namelist() == ["000000.jpg", "000001.jpg"]


def test_no_truncation_leaves_the_images_as_they_were(ckpt: Path, tmp_path: Path) -> None:
    default = run(ckpt, tmp_path / "default", "seed=1", "num_images=3")
    null = run(ckpt, tmp_path / "null", "seed=1", "num_images=3", "truncation=null")
    wide = run(ckpt, tmp_path / "wide", "seed=1", "num_images=3", "truncation=10")
    for name in (f"{i:06d}.png" for i in range(3)):
        assert (default / name).read_bytes() == (null / name).read_bytes()
        assert (default / name).read_bytes() == (wide / name).read_bytes()


def test_bad_truncation_is_refused_before_anything_is_written(ckpt: Path, tmp_path: Path) -> None:
    for psi in ("0", "-0.5", "abc", "true"):
        with pytest.raises(ValueError, match=r"truncation must be a number > 0 .* got"):
            run(ckpt, tmp_path / "x", f"truncation={psi}")
    uniform = torch.load(ckpt, weights_only=True)
    uniform["hyper_parameters"]["noise"] = "uniform"
    torch.save(uniform, tmp_path / "uniform.ckpt")
    with pytest.raises(ValueError, match=r"scale U\(-1, 1\) noise beyond .* \(0, 1\]"):
        run(tmp_path / "uniform.ckpt", tmp_path / "x", "truncation=1.5")
    assert not (tmp_path / "x").exists()
    out = run(tmp_path / "uniform.ckpt", tmp_path / "u", "truncation=1", "num_images=1")
    assert json.loads((out / RECORD).read_text())["noise"] == "uniform"


def test_bad_inputs_error_clearly(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_generator(tmp_path / "missing.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_generator(text)
    cases = {
        "tensor.pt": (torch.zeros(3), "not a Lightning checkpoint"),
        "other.ckpt": (
            {"hyper_parameters": {"lr": 0.1}, "state_dict": {"net.w": torch.zeros(1)}},
            "not of a dcgan_lightning GAN",
        ),
        "objects.ckpt": ({"hyper_parameters": argparse.Namespace(a=1)}, "not unpickling"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=message):
            load_generator(tmp_path / name)
    mismatched = torch.load(ckpt, weights_only=True)
    mismatched["hyper_parameters"]["z_dim"] = 7
    torch.save(mismatched, tmp_path / "mismatched.ckpt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_generator(tmp_path / "mismatched.ckpt")

    with pytest.raises(ValueError, match="choose one"):
        run(ckpt, tmp_path / "x", "grid=true", f"zip={tmp_path}/x.zip")
    with pytest.raises(ValueError, match="format must be one of"):
        run(ckpt, tmp_path / "x", "format=gif")
    assert not (tmp_path / "x").exists()


def test_a_zip_kaggle_would_reject_is_refused_before_anything_is_written(
    ckpt: Path, tmp_path: Path
) -> None:
    """zip= is Kaggle's submission layout: by default, a zip the competition rejects (not 7,000-
    10,000 JPEGs of 256x256) is one message naming the fix, and no zip is written."""
    dest = tmp_path / "images.zip"
    with pytest.raises(UserError) as refused:
        run(ckpt, None, f"zip={dest}")  # num_images=64, size=null: the model's 32 px
    message = str(refused.value)
    assert "64 images (it takes 7,000-10,000)" in message and "32x32 px" in message
    assert "num_images=7000" in message and "size=256" in message and "kaggle=false" in message
    with pytest.raises(UserError, match=r"png files \(it takes jpg\).*format=jpg"):
        run(ckpt, None, f"zip={dest}", "num_images=7000", "size=256", "format=png")
    assert not dest.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("num_images", "classes", "size", "refused"),
    [(7000, None, 256, False), (10_000, None, 256, False), (6999, None, 256, True),
     (10_001, None, 256, True), (7000, None, 128, True), (1000, [0, 1, 2, 3, 4, 5, 6], 256, False),
     (1000, [0, 1], 256, True)],
)  # fmt: skip
def test_the_kaggle_check_takes_7000_to_10000_images_of_256_px(
    num_images: int, classes: list[int] | None, size: int, refused: bool
) -> None:
    cfg = OmegaConf.create(
        {"kaggle": True, "zip": "x.zip", "num_images": num_images, "size": size, "format": None}
    )
    generator = argparse.Namespace(image_size=64)
    if refused:
        with pytest.raises(UserError, match="Kaggle would reject"):
            check_kaggle_zip(cfg, generator, classes)
    else:
        check_kaggle_zip(cfg, generator, classes)
    cfg.kaggle = False
    check_kaggle_zip(cfg, generator, classes)  # any zip


def test_cli_writes_a_grid_and_nothing_else(ckpt: Path, tmp_path: Path) -> None:
    """The Hydra entry point, run as users run it: Hydra itself leaves no files behind."""
    cmd = [sys.executable, "-m", "dcgan_lightning.generate", f"ckpt_path={ckpt}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [*cmd, "out=out", "grid=true", "num_images=3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with Image.open(tmp_path / "out" / "grid.png") as image:
        assert image.size == (GRID_PAD + 2 * (SIDE + GRID_PAD),) * 2  # 3 images: 2x2 grid


@requires_cuda
def test_cuda_gives_the_cpu_images(ckpt: Path) -> None:
    cpu, cuda = load_generator(ckpt), load_generator(ckpt, device="cuda")
    z_cpu = cpu.sample_noise(8, torch.Generator().manual_seed(0))
    z_cuda = cuda.sample_noise(8, torch.Generator().manual_seed(0))
    assert z_cuda.is_cuda and torch.equal(z_cuda.cpu(), z_cpu)  # z drawn on the CPU either way
    with torch.no_grad():
        torch.testing.assert_close(cuda(z_cuda).cpu(), cpu(z_cpu), atol=1e-3, rtol=0)
