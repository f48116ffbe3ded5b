"""The command line a new user meets: a mistake gets one clear message and exit status 2, before a
run directory fills up; bugs keep their traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

import dcgan_lightning.__main__ as cli
from dcgan_lightning.errors import UserError
from tests.conftest import REPO


def run_cli(cwd: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m dcgan_lightning` in `cwd` with no Kaggle credentials and W&B offline."""
    home = cwd / "home"
    home.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "HYDRA_"))}
    clean.update(PYTHONPATH=str(REPO), HOME=str(home), WANDB_MODE="offline", **env)
    return subprocess.run(
        [sys.executable, "-m", "dcgan_lightning", *overrides],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=300,
    )


def only_run_dir(cwd: Path, task: str) -> Path:
    (run,) = (cwd / "outputs" / task / "runs").iterdir()
    return run


@pytest.mark.slow
def test_missing_data_is_one_message_exit_2_and_nothing_written(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "+experiment=picasso", f"paths.data_dir={tmp_path / 'data'}")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Image folder not found at" in output and "How to get it:" in output
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output
    run = only_run_dir(tmp_path, "picasso")
    assert sorted(p.name for p in run.iterdir() if p.name != ".hydra") == ["train.log"]
    assert "How to get it:" in (run / "train.log").read_text()


@pytest.mark.slow
def test_hydra_full_error_shows_the_user_errors_traceback(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "+experiment=picasso",
        f"paths.data_dir={tmp_path / 'data'}",
        HYDRA_FULL_ERROR="1",
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "MissingDataError" in result.stderr


@pytest.mark.parametrize("error", [RuntimeError("a bug"), FileNotFoundError("no such file")])
def test_anything_but_a_user_error_propagates_with_its_traceback(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(cfg: object) -> None:
        raise error

    monkeypatch.setattr(cli, "train", fails)
    with pytest.raises(type(error)) as raised:
        cli.main.__wrapped__(OmegaConf.create({}))
    assert raised.value is error and raised.value.__traceback__ is not None


def wrapped_by_instantiate(message: str) -> InstantiationException:
    try:
        raise UserError(message)
    except UserError as err:
        try:
            raise InstantiationException("Error in call to target 'GAN'") from err
        except InstantiationException as wrapped:
            return wrapped


@pytest.mark.parametrize("wrap", [UserError, wrapped_by_instantiate])
def test_a_user_error_exits_2_with_its_message(
    wrap, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fails(cfg: object) -> None:
        raise wrap("data.batch_size=128 but 43 images: lower data.batch_size")

    monkeypatch.setattr(cli, "train", fails)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main.__wrapped__(OmegaConf.create({}))
    assert exit_.value.code == 2
    assert [r.getMessage() for r in caplog.records] == [
        "data.batch_size=128 but 43 images: lower data.batch_size"
    ]
