"""The small-data study: its memorisation measure (r_v), its digits set, the script end to end."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from dcgan_lightning.studies import small_data
from dcgan_lightning.studies.overfitting import discriminator_overfitting
from tests.conftest import REPO


class MeanPixel(nn.Module):
    """A stand-in discriminator whose logit is the image's mean pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))


class Constant(nn.Module):
    """A stand-in generator that draws every image in one grey level."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full((z.size(0), 3, 32, 32), self.level)


def gan(make_cfg, *overrides: str):
    cfg = make_cfg(*overrides)
    dm = instantiate(cfg.data)
    return instantiate(cfg.model, image_size=dm.image_size, channels=dm.channels)


def test_r_v_is_the_ratio_of_logit_gaps(make_cfg) -> None:
    model = gan(make_cfg)
    model.discriminator, model.generator = MeanPixel(), Constant(-0.5)
    train, heldout = torch.full((10, 3, 32, 32), 0.5), torch.zeros(6, 3, 32, 32)
    result = discriminator_overfitting(model, train, heldout, batch_size=4)
    assert result["d_train"] == pytest.approx(0.5) and result["d_heldout"] == pytest.approx(0.0)
    assert result["d_generated"] == pytest.approx(-0.5)
    assert result["r_v"] == pytest.approx((0.5 - 0.0) / (0.5 + 0.5))


def test_r_v_is_zero_on_the_training_set_and_leaves_model_and_rng_alone(make_cfg) -> None:
    model = gan(make_cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(40, 3, 32, 32) * 2 - 1
    rng = torch.get_rng_state()
    result = discriminator_overfitting(model, images, images.clone(), batch_size=8)
    assert torch.equal(torch.get_rng_state(), rng)
    assert result["r_v"] == 0.0 and result["d_train"] != result["d_generated"]
    after = model.state_dict()  # BatchNorm statistics and spectral-norm vectors included
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_r_v_sees_images_through_the_models_diffaugment(make_cfg) -> None:
    model = gan(make_cfg, "model.diffaugment=[cutout]")
    model.discriminator, model.generator = MeanPixel(), Constant(-0.5)
    ones = torch.ones(16, 3, 32, 32)
    result = discriminator_overfitting(model, ones, ones.clone(), batch_size=16)
    assert result["d_train"] < 1.0  # a square of every image was cut out before D saw it


def fake_digits(monkeypatch, images: np.ndarray) -> None:
    """scikit-learn's `load_digits` returning `images`, without scikit-learn."""
    datasets = types.ModuleType("sklearn.datasets")
    datasets.load_digits = lambda: types.SimpleNamespace(images=images)
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", datasets)


def pngs(folder) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.iterdir())]


def test_digits_are_written_as_a_train_and_a_held_out_folder(tmp_path, monkeypatch) -> None:
    images = np.arange(12 * 64).reshape(12, 8, 8) % 17.0  # ink levels 0..16, as scikit-learn's
    fake_digits(monkeypatch, images)

    overrides, heldout = small_data.digits(tmp_path, 5)
    assert sorted(p.name for p in (tmp_path / "train").iterdir())[:2] == ["0000.png", "0001.png"]
    train, held_out = pngs(tmp_path / "train"), pngs(tmp_path / "heldout")
    assert len(train) == len(held_out) == 5
    with Image.open(tmp_path / "heldout" / "0000.png") as first_heldout:
        assert first_heldout.mode == "L"
    written = [np.round(image * 255 / 16).astype(np.uint8) for image in images]
    index = [next(i for i, w in enumerate(written) if np.array_equal(w, png)) for png in train]
    index_held_out = [
        next(i for i, w in enumerate(written) if np.array_equal(w, png)) for png in held_out
    ]
    assert len(set(index) | set(index_held_out)) == 10  # 10 distinct digits, none in both
    assert overrides[:2] == ["data=image_folder", "data.channels=1"]
    assert heldout == {"root": str(tmp_path / "heldout")}
    small_data.digits(tmp_path, 5)  # the same split on every run
    assert all(np.array_equal(a, b) for a, b in zip(train, pngs(tmp_path / "train")))
    with pytest.raises(SystemExit, match="--images must be <= 6"):
        small_data.digits(tmp_path, 7)
    small_data.digits(tmp_path, 3)  # a smaller rerun into the same folder trains on 3, not 5
    assert len(list((tmp_path / "train").iterdir())) == 3


def test_digits_train_and_held_out_come_from_every_writer(tmp_path, monkeypatch) -> None:
    """scikit-learn's digits run writer by writer (the first 300 and the next 300 differ: their
    mean images lie 3x farther apart than two random 300s'). Held-out digits of other writers
    than the training ones would look fake to a D that never memorised anything: r_v would read
    high for no memorisation. So both splits are drawn from the whole set."""
    writers = np.repeat(np.arange(4), 50)  # 4 writers of 50 digits, one after another
    images = np.broadcast_to(writers[:, None, None] * 4.0, (200, 8, 8)).copy()
    fake_digits(monkeypatch, images)
    small_data.digits(tmp_path, 100)
    for split in ("train", "heldout"):
        per_writer = np.bincount([round(png[0, 0] / 63.75) for png in pngs(tmp_path / split)])
        assert len(per_writer) == 4 and per_writer.min() >= 15, (split, per_writer)


def test_digits_without_scikit_learn_say_what_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    with pytest.raises(SystemExit, match="pip install scikit-learn"):
        small_data.digits(tmp_path, 5)


@pytest.mark.slow
def test_small_data_study_compares_both_arms_at_equal_steps(tmp_path) -> None:
    """The study script, tiny: 64 images (2 batches an epoch), 2 epochs, evaluated each epoch,
    both arms at once."""
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "dcgan_lightning.studies.small_data", "--images=64"]
    cmd += [
        "--epochs=2",
        "--eval-every=1",
        "--jobs=2",
        f"--out={out}",
        "--",
        "metrics.download=false",
    ]
    cmd += ["model.generator.features=8", "model.discriminator.features=8"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    assert "| batches | dcgan | dcgan_plus |" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| 2 |", "| 4 |"))]
    assert len(rows) == 4 and all(len(row.split("|")) == 5 for row in rows)  # swd, nn_ratio
    assert "val/nn_ratio (below 1: samples sit nearer training images" in result.stdout
    assert "val/fid" not in result.stdout  # no Inception weights offline: SWD only
    arm_rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| dcg")]
    r_v = {row[1].strip(): float(row[2]) for row in arm_rows}
    assert set(r_v) == {"dcgan", "dcgan_plus"} and all(math.isfinite(v) for v in r_v.values())
    plus = OmegaConf.load(out / "dcgan_plus_seed0" / "config.yaml").model
    assert (plus.loss, plus.discriminator.spectral_norm) == ("hinge", True)
    assert OmegaConf.load(out / "dcgan_seed0" / "config.yaml").model.loss == "bce"
    assert (out / "dcgan_seed0.log").stat().st_size > 0  # each arm's own output
    with Image.open(out / "samples.png") as both, Image.open(out / "curves.png"):
        grid = Image.open(out / "dcgan_seed0" / "samples" / "epoch_0001.png")
        assert both.size == (2 * grid.width + 10, grid.height + 20)


def test_tables_show_the_mean_and_spread_over_seeds() -> None:
    curves = {"dcgan": [{9: 100.0, 18: 80.0}, {9: 110.0, 18: 90.0}], "dcgan_plus": [{9: 50.0}] * 2}
    lines = small_data.table("val/swd", curves).splitlines()
    assert "| batches | dcgan | dcgan_plus |" in lines
    assert "| 9 | 105 ± 7.1 | 50 ± 0 |" in lines  # sample standard deviation
    assert not any(line.startswith("| 18 |") for line in lines)  # not every arm got there
    one_seed = small_data.table("val/swd", {"dcgan": [{9: 100.0}]})
    assert "| 9 | 100 |" in one_seed
    row = {"r_v": 0.25, "d_train": 4.0, "d_heldout": 2.0, "d_generated": -4.0}
    assert "| dcgan | 0.25 | 4 | 2 | -4 |" in small_data.overfitting_table({"dcgan": [row]})
