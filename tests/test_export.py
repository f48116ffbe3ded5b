"""Export: a Hub model folder (safetensors + config.json + model card) and an ONNX graph, loaded
back by `generate`, by a Hub id (cache, offline) and in bare Python; pushing with a mocked Hub."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from dcgan_lightning.errors import UserError
from dcgan_lightning.export import export
from dcgan_lightning.generate import generate
from dcgan_lightning.generation import CheckpointError, load_generator
from dcgan_lightning.generation.hub import is_hub_id, require
from dcgan_lightning.train import train
from tests.conftest import REPO, compose_config, tiny

huggingface_hub = pytest.importorskip("huggingface_hub")
safetensors_torch = pytest.importorskip("safetensors.torch")
hub_errors = pytest.importorskip("huggingface_hub.errors")

OVERRIDES = ["model.ema={decay:0.5,start_step:0}", "logger=none", "metrics=none"]


def tiny_run(run_dir: Path, *overrides: str) -> Path:
    """last.ckpt of a tiny run, with the .hydra/overrides.yaml the CLI writes beside it. The last
    layer is scaled up so that images differ visibly (2 steps leave them near-uniform grey)."""
    train(tiny(compose_config([*OVERRIDES, *overrides], run_dir)))
    GlobalHydra.instance().clear()
    (run_dir / ".hydra").mkdir()
    lines = "".join(f"- {o}\n" for o in ["logger=none", *overrides])
    (run_dir / ".hydra" / "overrides.yaml").write_text(lines)
    path = run_dir / "checkpoints" / "last.ckpt"
    data = torch.load(path, weights_only=True)
    state = data["state_dict"]
    for prefix in ("generator.main.", "ema_generator.module.main."):
        layers = [k for k in state if re.fullmatch(rf"{re.escape(prefix)}\d+\.weight", k)]
        state[max(layers, key=lambda k: int(k.split(".")[-2]))] *= 1000
    torch.save(data, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("plain") / "run")


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("cond") / "run", "model=cdcgan", "data.labels=true")


def compose_run(config: str, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize(version_base="1.3", config_path="../conf"):
        return compose(config, overrides=list(overrides))


def run_export(ckpt: Path | str, out: Path, *overrides: str) -> Path:
    """`python -m dcgan_lightning.export ckpt_path=... out=... *overrides`, in process."""
    return export(compose_run("export", f"ckpt_path={ckpt}", f"out={out}", *overrides))


def run_generate(source: Path | str, out: Path, *overrides: str) -> Path:
    return generate(compose_run("generate", f"ckpt_path={source}", f"out={out}", *overrides))


@pytest.fixture(scope="module")
def exported(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_export(ckpt, tmp_path_factory.mktemp("export") / "monet-dcgan")


@pytest.fixture(scope="module")
def cond_exported(cond_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_export(cond_ckpt, tmp_path_factory.mktemp("export") / "shapes-cdcgan")


def python_blocks(card: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", card, re.S))


# -- the folder -------------------------------------------------------------------------------
def test_folder_holds_ema_weights_config_card_and_grid(ckpt: Path, exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "samples.png",
    ]
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    ema = {k.removeprefix("ema_generator.module."): v for k, v in state.items()
           if k.startswith("ema_generator.module.")}  # fmt: skip
    weights = safetensors_torch.load_file(exported / "model.safetensors")
    assert weights.keys() == ema.keys()  # the bare Generator's own keys
    assert all(torch.equal(weights[k], ema[k]) for k in ema)
    raw = state["generator.main.0.weight"]
    assert not torch.equal(weights["main.0.weight"], raw)  # EMA, not the raw weights

    config = json.loads((exported / "config.json").read_text())
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert config == {
        "z_dim": hp["z_dim"],
        "image_size": 32,
        "channels": 3,
        "noise": "normal",
        "generator": hp["generator"],
        "conditional": None,
        "class_names": None,
        "ema": True,
    }
    with Image.open(exported / "samples.png") as grid:  # 8 x 8 images of 32 px, 2 px apart
        assert grid.size == (2 + 8 * 34, 2 + 8 * 34)
        assert np.asarray(grid).std() > 10


def test_card_has_hub_metadata_metrics_data_command_and_loading(ckpt: Path, exported: Path) -> None:
    card = huggingface_hub.ModelCard.load(exported / "README.md")
    assert card.data.library_name == "dcgan_lightning"
    assert card.data.license == "mit"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert {"dcgan", "gan", "unconditional-image-generation"} <= set(card.data.tags)
    text = card.text
    assert "![samples](samples.png)" in text
    metrics = json.loads((ckpt.parent.parent / "metrics.json").read_text())["metrics"]
    assert metrics  # the run logged its losses at least
    for name, value in metrics.items():
        assert f"| {name} | {value:.4g} |" in text
    assert "python -m dcgan_lightning logger=none" in text
    assert "ShapesDataModule" in text and "image_size: 32" in text
    assert "batch_size" not in text  # how batches are served is not what the data is
    assert f'PretrainedGenerator.from_pretrained("{exported}")' in text
    assert f"python -m dcgan_lightning.generate ckpt_path={exported}" in text
    assert "EMA" in text


def test_overwrite_guard_and_bad_options(ckpt: Path, exported: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not empty: pass overwrite=true"):
        run_export(ckpt, exported)
    with pytest.raises(UserError, match="format must be one of"):
        run_export(ckpt, tmp_path / "x", "format=pickle")
    with pytest.raises(UserError, match="Hub id USER/NAME"):
        run_export(ckpt, tmp_path / "x", "push_to_hub=no-slash")
    assert not (tmp_path / "x").exists()
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "notes.txt").write_text("mine")
    (tmp_path / "again" / "samples.png").write_text("old")
    run_export(ckpt, tmp_path / "again", "overwrite=true", "samples=4")
    assert (tmp_path / "again" / "notes.txt").read_text() == "mine"  # not ours: kept
    with Image.open(tmp_path / "again" / "samples.png") as grid:
        assert grid.size == (2 + 2 * 34, 2 + 2 * 34)


def test_ckpt_path_last_exports_the_newest_run(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"ckpt_path=last: no runs/\*/checkpoints/last\.ckpt"):
        run_export("last", tmp_path / "none")
    for i, task in enumerate(["shapes", "monet"]):
        dest = tmp_path / "outputs" / task / "runs" / f"2026-0{i + 1}" / "checkpoints"
        dest.mkdir(parents=True)
        shutil.copy(ckpt, dest / "last.ckpt")
        os.utime(dest / "last.ckpt", (1e9 + i, 1e9 + i))
    shutil.copy(ckpt.parent.parent / "metrics.json", dest.parent)
    out = run_export("last", tmp_path / "newest", "samples=1")
    assert "| Checkpoint | `last.ckpt`" in (out / "README.md").read_text()
    assert "Not recorded (no metrics.json" not in (out / "README.md").read_text()  # monet's
    out = run_export("last", tmp_path / "shapes", "task_name=shapes", "samples=1")
    assert "Not recorded (no metrics.json" in (out / "README.md").read_text()


# -- loading it back --------------------------------------------------------------------------
@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
def test_generate_from_the_folder_gives_the_checkpoint_images(
    conditional: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    ckpt = request.getfixturevalue("cond_ckpt" if conditional else "ckpt")
    folder = request.getfixturevalue("cond_exported" if conditional else "exported")
    a = run_generate(ckpt, tmp_path / "ckpt", "seed=7", "num_images=5", "batch_size=2")
    b = run_generate(folder, tmp_path / "dir", "seed=7", "num_images=5", "batch_size=3")
    names = sorted(p.name for p in a.glob("*.png"))
    assert names == sorted(p.name for p in b.glob("*.png"))
    assert len(names) == (5 * 3 if conditional else 5)  # shapes has 3 classes
    for name in names:
        assert np.array_equal(np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name)))
    record = json.loads((b / "generation.json").read_text())
    assert (record["ckpt_path"], record["ema"]) == (str(folder.resolve()), True)


def test_conditional_folder_keeps_its_classes(cond_ckpt: Path, cond_exported: Path) -> None:
    config = json.loads((cond_exported / "config.json").read_text())
    from_ckpt, from_dir = load_generator(cond_ckpt), load_generator(cond_exported)
    assert config["class_names"] == from_ckpt.class_names == from_dir.class_names
    assert config["conditional"]["generator"] == "cbn"
    with Image.open(cond_exported / "samples.png") as grid:  # a row of 8 per class
        assert grid.size == (2 + 8 * 34, 2 + 3 * 34)
    card = (cond_exported / "README.md").read_text()
    assert "class-conditional" in card and f'G.label_index("{config["class_names"][0]}")' in card


def test_card_snippet_loads_the_generator_without_lightning_or_hydra(
    ckpt: Path, exported: Path
) -> None:
    """The card's Python, run as written in a fresh interpreter: same images as the checkpoint,
    and neither Lightning nor Hydra imported. The bare Generator + safetensors route too."""
    snippet = python_blocks((exported / "README.md").read_text())
    bare = f"""
import json
from safetensors.torch import load_file
from dcgan_lightning.models.generator import Generator
cfg = json.load(open("{exported}/config.json"))
net = Generator(cfg["z_dim"], cfg["image_size"], cfg["channels"], **cfg["generator"]).eval()
net.load_state_dict(load_file("{exported}/model.safetensors"))
with torch.no_grad():
    assert torch.equal(net(z), images)
"""
    check = """
import sys
torch.save(images, sys.argv[1])
heavy = {"lightning", "pytorch_lightning", "hydra"}
print("HEAVY", sorted({m.split(".")[0] for m in sys.modules} & heavy))
"""
    out = exported.parent / "images.pt"
    result = subprocess.run([sys.executable, "-c", snippet + bare + check, str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    generator = load_generator(ckpt)
    with torch.no_grad():
        expected = generator(generator.sample_noise(16, torch.Generator().manual_seed(0)))
    assert torch.equal(torch.load(out), expected)


def test_hub_id_is_fetched_with_snapshot_download(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def snapshot_download(repo_id: str, **kwargs) -> str:
        calls.append((repo_id, kwargs))
        return str(exported)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    a = run_generate("someone/monet-dcgan", tmp_path / "hub", "num_images=2")
    b = run_generate(exported, tmp_path / "dir", "num_images=2")
    assert calls and calls[0][0] == "someone/monet-dcgan"
    assert (a / "000001.png").read_bytes() == (b / "000001.png").read_bytes()
    assert json.loads((a / "generation.json").read_text())["ckpt_path"] == "someone/monet-dcgan"


def test_hub_id_loads_offline_from_the_cache(exported: Path, tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1: a model in the Hugging Face cache loads; one that is not: one message."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--monet-dcgan" / "snapshots" / ("a" * 40)
    shutil.copytree(exported, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    script = """
import sys, torch
from dcgan_lightning.errors import UserError
from dcgan_lightning.generation import CheckpointError, load_generator
G = load_generator("someone/monet-dcgan")
torch.save(G(G.sample_noise(3, torch.Generator().manual_seed(1))), sys.argv[1])
try:
    load_generator("someone/not-cached")
except UserError as e:
    print("MESSAGE", e)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.pt")], env=env,
                            capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "MESSAGE cannot download Hub model someone/not-cached: no network" in result.stdout
    generator = load_generator(exported)
    with torch.no_grad():
        expected = generator(generator.sample_noise(3, torch.Generator().manual_seed(1)))
    assert torch.equal(torch.load(tmp_path / "x.pt"), expected)


def test_what_is_a_hub_id(exported: Path, tmp_path: Path) -> None:
    assert is_hub_id("someone/monet-dcgan") and is_hub_id("org.x/model_v1.2")
    assert not is_hub_id("runs/last.ckpt")  # a missing checkpoint, reported as such
    assert not is_hub_id("monet") and not is_hub_id("a/b/c") and not is_hub_id(exported)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_generator("runs/last.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"has no model\.safetensors"):
        load_generator(tmp_path / "empty")
    (tmp_path / "empty" / "checkpoints").mkdir()
    (tmp_path / "empty" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(
        UserError, match=r"not an exported model .* e\.g\. .*checkpoints/last\.ckpt"
    ):
        load_generator(tmp_path / "empty")


def test_mixin_save_pretrained_round_trips(exported: Path, tmp_path: Path) -> None:
    """huggingface_hub's own save_pretrained/from_pretrained keep the export's config and keys."""
    from dcgan_lightning.generation.pretrained import PretrainedGenerator

    generator = PretrainedGenerator.from_pretrained(exported)
    generator.save_pretrained(tmp_path / "again")
    config = json.loads((exported / "config.json").read_text())
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == config
    a = safetensors_torch.load_file(exported / "model.safetensors")
    b = safetensors_torch.load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = PretrainedGenerator.from_pretrained(tmp_path / "again")
    z = again.sample_noise(4, torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(again(z), generator(z))
    broken = {**config, "z_dim": config["z_dim"] + 1}  # weights that do not fit: refused
    (tmp_path / "again" / "config.json").write_text(json.dumps(broken))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not fit its config\.json"):
        PretrainedGenerator.from_pretrained(tmp_path / "again")


# -- the Hub ----------------------------------------------------------------------------------
def test_push_uploads_the_folder(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = mock.MagicMock()
    api.create_repo.return_value.repo_id = "me/monet-dcgan"
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: api)
    out = run_export(ckpt, tmp_path / "up", "push_to_hub=me/monet-dcgan", "private=true")
    api.create_repo.assert_called_once_with(
        "me/monet-dcgan", repo_type="model", private=True, exist_ok=True
    )
    kwargs = api.upload_folder.call_args.kwargs
    assert (kwargs["repo_id"], kwargs["folder_path"], kwargs["repo_type"]) == (
        "me/monet-dcgan",
        out,
        "model",
    )
    card = (out / "README.md").read_text()
    assert 'from_pretrained("me/monet-dcgan")' in card and "# monet-dcgan" in card


def test_push_without_network_is_one_message(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = mock.MagicMock()
    api.create_repo.side_effect = hub_errors.OfflineModeIsEnabled("offline mode")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: api)
    with pytest.raises(UserError, match=r"cannot reach the Hugging Face Hub .*`hf upload me/x "):
        run_export(ckpt, tmp_path / "up", "push_to_hub=me/x", "samples=1")
    assert (tmp_path / "up" / "model.safetensors").is_file()  # the export itself is done


def test_push_without_a_token_exits_with_one_message(ckpt: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "dcgan_lightning.export", f"ckpt_path={ckpt}",
               f"out={tmp_path / 'up'}", "push_to_hub=me/x", "samples=1"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert "push_to_hub=me/x needs a Hugging Face token" in output and "hf auth login" in output
    assert "Traceback" not in output


def test_a_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name)
    )
    with pytest.raises(
        UserError, match=r"onnxscript \(the `onnx` extra\): pip install -e '\.\[onnx\]'"
    ):
        require("onnx", "onnx", "onnxscript")


# -- ONNX -------------------------------------------------------------------------------------
@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
def test_onnx_graph_matches_torch_for_any_batch(
    conditional: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    ckpt = request.getfixturevalue("cond_ckpt" if conditional else "ckpt")
    out = run_export(ckpt, tmp_path / "onnx", "format=onnx", "samples=4")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.onnx",
        "samples.png",
    ]
    session = ort.InferenceSession(str(out / "model.onnx"))
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == (["z", "labels"] if conditional else ["z"])
    assert isinstance(inputs["z"].shape[0], str)  # a named, dynamic batch axis
    generator = load_generator(ckpt)
    for seed in (0, 1):
        for batch in (1, 3, 8):
            z = generator.sample_noise(batch, torch.Generator().manual_seed(seed))
            feeds = {"z": z.numpy()}
            labels = torch.arange(batch) % 3 if conditional else None
            if conditional:
                feeds["labels"] = labels.numpy()
            (images,) = session.run(None, feeds)
            with torch.no_grad():
                expected = generator(z, labels).numpy()
            assert images.shape == (batch, 3, 32, 32)
            np.testing.assert_allclose(images, expected, rtol=1e-4, atol=1e-4)
    card = (out / "README.md").read_text()
    assert "PretrainedGenerator" not in card
    namespace: dict = {}
    exec(python_blocks(card), namespace)  # the card's onnxruntime lines, as written
    assert namespace["images"].shape == (16, 3, 32, 32)
    # Tanh's range, to fp32 rounding: onnxruntime's tanh can exceed 1 by an ulp when saturated.
    assert np.abs(namespace["images"]).max() <= 1 + 1e-6
    with pytest.raises(UserError, match="an ONNX export"):
        load_generator(out)
