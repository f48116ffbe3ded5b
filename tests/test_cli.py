"""The command line a new user meets: `--help` pages that explain it, composed without torch; a
mistake gets one clear message and exit status 2, and leaves no run directory and no changed file
of a run it resumes; bugs keep their traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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


# Runs `python -m MODULE ARGS` for each (MODULE, ARGS) as runpy does, in one process (each new
# process imports torch again: 5-10 s), and reports each one's output and exit status.
DRIVER = """
import json, runpy, sys
for i, (module, args) in enumerate(json.loads(sys.argv[1])):
    print(f"@@ run {i}", flush=True)
    sys.argv = [module, *args]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException as err:
        code = f"raised {type(err).__name__}"
    sys.stdout.flush(); sys.stderr.flush()
    print(f"@@ exit {code}", flush=True)
heavy = sorted(m for m in ("torch", "lightning", "PIL") if m in sys.modules)
print(f"@@ heavy {json.dumps(heavy)}", flush=True)
"""


def run_many(cwd: Path, runs: list[tuple[str, list[str]]], **env: str) -> tuple[list, list[str]]:
    """[(exit status, output)] of each run of `DRIVER`, and the heavy modules it imported."""
    home = cwd / "home"
    home.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "HYDRA_"))}
    clean.update(PYTHONPATH=str(REPO), HOME=str(home), WANDB_MODE="offline", **env)
    clean.update(PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(runs)],
        cwd=cwd,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    chunks = re.split(r"^@@ run \d+\n", result.stdout, flags=re.MULTILINE)[1:]
    assert len(chunks) == len(runs), result.stdout
    outcomes = []
    for chunk in chunks:
        output, status = re.search(r"(.*)^@@ exit (\S+)", chunk, re.DOTALL | re.MULTILINE).groups()
        outcomes.append((int(status) if status.lstrip("-").isdigit() else status, output))
    heavy = json.loads(re.search(r"^@@ heavy (.*)$", result.stdout, re.MULTILINE).group(1))
    return outcomes, heavy


def files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


# -- --help and --cfg job: fast, and what they say ------------------------------------------------
def test_help_and_cfg_job_explain_the_cli_without_importing_torch(tmp_path: Path) -> None:
    """`--help` (train, generate) and `--cfg job` compose without torch or Lightning: the 9 s they
    took came from importing them. Each help documents its own keys with their YAML comments."""
    runs = [
        ("dcgan_lightning", ["--help"]),
        ("dcgan_lightning", ["model=dcgan_plus", "+experiment=monet", "--help"]),
        ("dcgan_lightning", ["--cfg", "job", "model.loss=hinge"]),
        ("dcgan_lightning.generate", ["--help"]),
    ]
    outcomes, heavy = run_many(tmp_path, runs)
    (train_status, train_help), (_, plus_help), (cfg_status, cfg_job), (gen_status, gen_help) = (
        outcomes
    )
    assert heavy == []  # neither torch, nor Lightning, nor PIL
    assert (train_status, cfg_status, gen_status) == (0, 0, 0)
    assert train_help.startswith("Train a DCGAN") and "Usage:" in train_help
    assert "python -m dcgan_lightning [+experiment=NAME]" in train_help
    assert "+experiment=NAME  (docs/datasets.md)" in train_help
    assert (
        "      animals, animals_conditional, artists," in train_help
        and "monet, picasso" in train_help
    )
    assert re.search(r"^\s+cdcgan, dcgan\*, dcgan_plus, upsample$", train_help, re.MULTILINE)
    assert "model=OPTION  (docs/configuration.md)" in train_help
    # Keys with the comments of their YAML files, nested under their group.
    assert "    loss: bce  # bce (non-saturating) | hinge | lsgan" in train_help
    assert "  # Name of the run family: runs land in outputs/<task_name>/." in train_help
    assert "is powered by Hydra" not in train_help and "$" not in train_help.replace("${", "")
    # With overrides, the help documents that config: dcgan_plus's and Monet's own comments.
    assert "monet*" in plus_help and "task_name: monet" in plus_help
    assert "monet_jpg  # the image folder's name inside root" in plus_help
    assert "loss: hinge" in plus_help
    assert "loss: hinge" in cfg_job and "_target_: dcgan_lightning.models.gan_module.GAN" in cfg_job
    # generate's help: its own keys with their meanings, nothing of training.
    assert "python -m dcgan_lightning.generate ckpt_path=PATH" in gen_help
    assert "  ckpt_path: ???  # a .ckpt written by training" in gen_help
    assert "  kaggle: true" in gen_help and "truncation: null  # psi" in gen_help
    for training in ("model=", "trainer", "data=", "optimizer", "+experiment"):
        assert training not in gen_help, training


def test_an_unknown_key_exits_2_with_the_closest_valid_key(tmp_path: Path) -> None:
    runs = [
        ("dcgan_lightning", ["model.z_dimm=5", "trainer.max_epochs=3"]),
        ("dcgan_lightning", ["model=dcgan_plus", "+experiment=picasso", "model.los=hinge"]),
        ("dcgan_lightning.generate", ["ckpt_path=x.ckpt", "num_imgaes=3"]),
        ("dcgan_lightning", ["model=dcgan_pluss"]),
    ]
    (outcomes, heavy) = run_many(tmp_path, runs)
    assert [status for status, _ in outcomes] == [2, 2, 2, 2]
    z_dim, loss, num_images, group = (output for _, output in outcomes)
    assert "Could not override 'model.z_dimm'" in z_dim  # Hydra's message, then ours
    assert "model.z_dimm: did you mean model.z_dim?" in z_dim
    assert "model.los: did you mean model.loss?" in loss
    assert "num_imgaes: did you mean num_images?" in num_images
    assert "Could not find 'model/dcgan_pluss'" in group and "dcgan_plus" in group
    assert all("Traceback" not in output for _, output in outcomes)
    assert not (tmp_path / "outputs").exists() and heavy == []  # failed before any run began


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


# -- every mistake: one message, exit 2, nothing left behind --------------------------------------
TINY = [
    "logger=csv",
    "metrics=none",
    "data.num_images=64",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "model.generator.features=8",
    "model.discriminator.features=8",
]


def assert_one_message(status: object, output: str, *fix: str) -> None:
    assert status == 2, output
    assert "Traceback" not in output and "HYDRA_FULL_ERROR=1 for a complete" not in output, output
    for text in fix:
        assert text in output, output


@pytest.fixture(scope="module")
def start_mistakes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """In one process: each start mistake (on Picasso, whose data is missing: each is reported
    before the data is looked for), then a tiny run that trains."""
    cwd = tmp_path_factory.mktemp("cli")
    picasso = ["+experiment=picasso", f"paths.data_dir={cwd / 'no_data'}"]
    mistakes = [
        [*picasso, "model.loss=hing"],
        [*picasso, "data.image_size=100"],
        [*picasso, "trainer.precision=bogus"],
        [*picasso, "trainer=gpu"],
        [*picasso, "ckpt_path=nope.ckpt"],
        [*picasso, f"ckpt_path={cwd}"],
        [*picasso, "ckpt_path=last"],
        picasso,  # the data itself
    ]
    outcomes, _ = run_many(cwd, [("dcgan_lightning", args) for args in [*mistakes, TINY]])
    return cwd, outcomes


@pytest.mark.slow
def test_start_mistakes_exit_2_before_the_data_and_leave_no_run_dir(
    start_mistakes: tuple[Path, list],
) -> None:
    cwd, outcomes = start_mistakes
    loss, size, precision, gpu, missing, directory, last, data, trained = outcomes
    assert_one_message(*loss, "model: loss must be one of ('bce', 'hinge', 'lsgan'), got 'hing'")
    assert_one_message(*size, "data: image_size must be a power of two in [32, 256], got 100")
    assert_one_message(*precision, "Precision 'bogus' is invalid", "Check the trainer.* settings")
    if not torch.cuda.is_available():
        assert_one_message(*gpu, "trainer=gpu needs a CUDA GPU", "use trainer=cpu")
    assert_one_message(*missing, "ckpt_path=nope.ckpt: no such file", "ckpt_path=last")
    assert_one_message(*directory, "is a directory; pass a checkpoint file")
    assert_one_message(*last, "ckpt_path=last: no checkpoints/last.ckpt under", "task_name")
    assert_one_message(*data, "Image folder not found at", "How to get it:")
    for _, output in outcomes[:7]:
        assert "Image folder not found" not in output  # found before the data is looked for
    assert trained[0] == 0, trained[1]
    # Only the run that trained left a directory: no picasso/ run dir, no config.yaml elsewhere.
    assert [p.name for p in (cwd / "outputs").iterdir()] == ["shapes"]
    assert (only_run_dir(cwd, "shapes") / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_resume_and_generate_mistakes_exit_2_and_change_no_file_of_the_run(
    start_mistakes: tuple[Path, list],
) -> None:
    cwd, _ = start_mistakes
    run = only_run_dir(cwd, "shapes")
    ckpt = run / "checkpoints" / "last.ckpt"
    data = ckpt.read_bytes()
    (cwd / "half.ckpt").write_bytes(data[: len(data) // 2])
    before = files(run)
    runs = [
        ("dcgan_lightning", ["ckpt_path=last", "trainer.max_epochs=2"]),  # TINY forgotten
        ("dcgan_lightning", [*TINY, "ckpt_path=last", "trainer=gpu"]),
        ("dcgan_lightning", [*TINY, "ckpt_path=half.ckpt"]),
        ("dcgan_lightning.generate", ["ckpt_path=nope.ckpt"]),
        ("dcgan_lightning.generate", [f"ckpt_path={run}"]),
        ("dcgan_lightning.generate", ["ckpt_path=half.ckpt"]),
        ("dcgan_lightning.generate", [f"ckpt_path={ckpt}", "label=Trouser"]),
        ("dcgan_lightning.generate", [f"ckpt_path={ckpt}", "zip=images.zip"]),
    ]
    outcomes, _ = run_many(cwd, runs)
    mismatch, gpu, corrupt, gen_missing, gen_dir, gen_corrupt, label, kaggle = outcomes
    # The diff as the message, and the command that resumes with the run's own overrides.
    assert_one_message(
        *mismatch,
        "does not fit the model of this run:",
        "generator.features: 8 in the checkpoint, 64 here",
        "resume with:\n  python -m dcgan_lightning logger=csv metrics=none",
        f"model.discriminator.features=8 ckpt_path={ckpt}",
    )
    if not torch.cuda.is_available():
        assert_one_message(*gpu, "use trainer=cpu")
    assert_one_message(*corrupt, "Cannot read checkpoint half.ckpt", "truncated")
    assert_one_message(*gen_missing, "checkpoint nope.ckpt does not exist")
    assert_one_message(*gen_dir, "is not an exported model", "pass a checkpoint in it", str(ckpt))
    assert_one_message(*gen_corrupt, "half.ckpt is not a PyTorch checkpoint")
    assert_one_message(*label, "is unconditional: drop label=")
    assert_one_message(*kaggle, "Kaggle would reject", "num_images=7000", "size=256")
    assert files(run) == before  # .hydra/overrides.yaml and train.log included
    assert not (cwd / "images.zip").exists() and not (run / "generated").exists()
