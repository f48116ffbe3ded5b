"""Quality metrics under DDP when ranks see different files: one decision, taken by rank 0.

A multi-node run with a node-local `paths.data_dir` or torch hub: only rank 0's disk has the cached
real features, or the Inception weights. Two gloo ranks (`trainer=ddp_sim`) in a subprocess, killed
after a timeout: a rank that took another path than its peers would wait in a collective forever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from omegaconf import OmegaConf, open_dict

from dcgan_lightning.callbacks.quality import QualityMetrics
from dcgan_lightning.data.shapes import SHAPES
from dcgan_lightning.metrics import inception
from dcgan_lightning.train import train
from tests.conftest import REPO, fast_ranks
from tests.test_metrics import TinyExtractor, metric_overrides

TIMEOUT_S = 240  # a healthy run takes well under a minute on a busy 2-core CPU


class HiddenFromRank1(QualityMetrics):
    """QualityMetrics on a rank 1 that cannot see `hide` ("cache": the cached real features,
    "weights": the Inception weights), as on a second node with its own local disk. Each rank
    writes to `empty_dir/../rank<r>.json` the values it computed (before Lightning's mean over
    ranks), what it logged and how many images its extractor saw.

    Lives here at module level: spawned ranks unpickle it by name.
    """

    def __init__(self, hide: str, empty_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hide, self.empty_dir, self.kwargs = hide, empty_dir, kwargs
        self.computed: list[dict[str, float]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.global_rank == 1:
            if self.hide == "cache":
                self.cache_dir = self.empty_dir
            else:  # as this rank's own start-up would have found them: not at all
                missing = f"{self.empty_dir}/{inception.WEIGHTS_NAME}"
                QualityMetrics.__init__(
                    self, **{**self.kwargs, "feature_extractor_weights_path": missing}
                )
        super().setup(trainer, pl_module, stage)
        compute = self.evaluator.compute
        self.evaluator.compute = lambda: self.computed.append(compute()) or self.computed[-1]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {"computed": self.computed, "seen": getattr(self.extractor, "images_seen", 0)}
        record["logged"] = {k: float(v) for k, v in trainer.callback_metrics.items() if "val/" in k}
        path = Path(self.empty_dir).parent / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))


def tiny_inception_train(cfg_file: str) -> None:
    """`train(cfg)` with TinyExtractor as "Inception": run in the subprocess."""
    inception.load_inception = lambda path, antialias: TinyExtractor()
    train(OmegaConf.load(cfg_file))


def run_bounded(cfg, tmp_path: Path) -> subprocess.CompletedProcess:
    """Train `cfg` in a fresh process group; kill all of it (both ranks) after TIMEOUT_S."""
    cfg_file = tmp_path / "cfg.yaml"
    OmegaConf.save(cfg, cfg_file, resolve=True)
    code = f"from {__name__} import tiny_inception_train; tiny_inception_train({str(cfg_file)!r})"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCH_HOME": str(tmp_path / "torch_home")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"hung: no result after {TIMEOUT_S} s\n{out[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def ddp_cfg(make_cfg, tmp_path: Path, hide: str, trainer: str = "ddp_sim", *extra: str):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"stand-in")  # TinyExtractor stands in for what it holds
    cfg = make_cfg(
        *metric_overrides(tmp_path, f"metrics.feature_extractor_weights_path={weights}"),
        f"trainer={trainer}",
        *([fast_ranks()] if trainer == "ddp_sim" else []),
        *extra,
    )
    with open_dict(cfg):
        metrics = OmegaConf.to_container(cfg.metrics, resolve=True)
        target = f"{__name__}.HiddenFromRank1"
        empty = str(tmp_path / "empty")
        cfg.callbacks.quality_metrics = {**metrics, "_target_": target, "hide": hide}
        cfg.callbacks.quality_metrics.empty_dir = empty
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
def test_cache_only_rank_0_can_see_is_shared_with_every_rank(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conditional: bool
) -> None:
    # A first run (one process) writes the cache of real features.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(inception, "load_inception", lambda path, antialias: TinyExtractor())
    extra = ("model=cdcgan", "data.labels=true") if conditional else ()
    train(ddp_cfg(make_cfg, tmp_path, "cache", "cpu", *extra))
    assert len(list((tmp_path / "cache").glob("real_features_*.pt"))) == 1

    cfg = ddp_cfg(make_cfg, tmp_path, "cache", "ddp_sim", *extra)
    cfg.paths.output_dir = str(tmp_path / "ddp_run")
    proc = run_bounded(cfg, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["computed"] == r1["computed"] and len(r0["computed"]) == 1
    assert {"fid", "kid", "swd"} <= set(r0["computed"][0])
    assert r0["logged"] == r1["logged"] and "val/fid" in r0["logged"]
    if conditional:  # per class too, from each rank's share of the cached features and labels
        per_class = {f"{m}/{shape}" for m in ("fid", "kid", "swd") for shape in SHAPES}
        assert per_class | {"fid_class_mean"} <= set(r0["computed"][0])
    # Neither rank ran its extractor on real images: rank 1 got rank 0's cached features.
    assert r1["seen"] == 16  # its half of the 32 generated images
    # and the samples of nearest.png: 16, or the conditional grid's 3 rows of 5 (16 rounded down)
    assert r0["seen"] == 16 + (15 if conditional else 16)
    assert not (tmp_path / "empty").exists()  # and rank 1 wrote no second cache


@pytest.mark.slow
def test_weights_only_rank_0_can_see_stop_every_rank_with_one_message(
    make_cfg, tmp_path: Path
) -> None:
    proc = run_bounded(ddp_cfg(make_cfg, tmp_path, "weights"), tmp_path)
    assert proc.returncode != 0
    assert "Inception weights on rank 0 but not on rank(s) [1]" in proc.stdout
    assert not list(tmp_path.glob("rank*.json"))  # stopped before training
