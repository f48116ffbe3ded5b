"""The real-paintings study's own pieces: the canonical loop, loading its generators, the tables."""

from __future__ import annotations

from pathlib import Path

import torch

from dcgan_lightning.studies import real_paintings as study


def test_canonical_loop_saves_g_at_each_evaluation_point_and_score_reads_them(
    tmp_path: Path,
) -> None:
    images = torch.rand(40, 3, 32, 32) * 2 - 1  # 2 batches of 32 an epoch, the last short
    study.canonical_loop(images, seed=0, batches=4, every=2, features=8, out=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("G_*.pt")) == ["G_000002.pt", "G_000004.pt"]
    assert (tmp_path / "time.json").exists()
    generators = study.load_generators(tmp_path, features=8, size=32)
    assert sorted(generators) == [2, 4]
    G, z_dim = generators[4]
    for mode in ("eval", "train", "standing"):
        fakes = study.samples(G, z_dim, 10, mode)
        assert fakes.shape == (10, 3, 32, 32) and fakes.abs().max() <= 1
    reals = (torch.rand(10, 3, 32, 32) * 255).to(torch.uint8)
    assert study.score_generator(study.samples(G, z_dim, 10, "eval"), reals) > 0


def test_report_gives_mean_and_sd_over_seeds_per_arm_and_evaluation() -> None:
    def run(swd: float) -> dict:
        modes = {"eval": swd, "train": swd, "standing": swd}
        return {"val": {"val/swd": {10: swd}}, "swd": {"10": modes}, "s_per_batch": 0.1}

    text = study.report({"sisley/raw_seed0": run(1.0), "sisley/raw_seed1": run(3.0)})
    assert "| raw | 2 | val/swd | 2.0 ± 1.4 |" in text
    assert "| raw | 2 | SWD, standing BN | 2.0 ± 1.4 |" in text


def test_every_arm_composes_with_the_settings_it_names(tmp_path: Path) -> None:
    from argparse import Namespace

    from dcgan_lightning.compose import compose_train_config

    args = Namespace(image_size=32, features=8)
    cfg = {
        arm: compose_train_config(study.arm_overrides(arm, "sisley", 2, args), tmp_path)
        for arm in study.ARMS
    }
    assert cfg["canonical"].model.optimizer_d.lr == 2e-4 and not cfg["canonical"].data.flip
    assert cfg["monet"].data.flip and cfg["monet"].model.generator.arch == "convtranspose"
    assert list(cfg["ada"].model.diffaugment) == ["color", "translation", "cutout"]
    assert cfg["ada"].model.ada.kimg == 5 and cfg["ada"].model.ada.target == 0.6
    assert cfg["ttur"].model.optimizer_d.lr == 1e-4 and cfg["ttur"].model.optimizer_g.lr == 2e-4
    assert all(c.data.image_size == 32 and c.model.generator.features == 8 for c in cfg.values())
