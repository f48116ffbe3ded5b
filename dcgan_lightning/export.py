"""`python -m dcgan_lightning.export ckpt_path=PATH|last out=DIR [push_to_hub=USER/NAME]`.

Turns a training checkpoint into a Hub-style model folder that loads without Lightning or Hydra:
`config.json` (what rebuilds the generator), the generator's weights (`model.safetensors`, the EMA
weights where the run kept some) or its ONNX graph (`model.onnx`, `format=onnx`), a sample grid
and a `README.md` model card (Hub metadata, the run's final metrics, data, training command, how to
load it). `push_to_hub=USER/NAME` uploads the folder. See conf/export.yaml for every option.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
import yaml
from omegaconf import DictConfig
from PIL import Image

from dcgan_lightning.cli import run_cli, run_task
from dcgan_lightning.compose import CONF_DIR
from dcgan_lightning.errors import UserError
from dcgan_lightning.generation.hub import CONFIG, ONNX_GRAPH, WEIGHTS, is_hub_id, require
from dcgan_lightning.generation.images import encode, grid, to_pil, to_uint8
from dcgan_lightning.generation.loading import TrainedGenerator, load_generator, read_checkpoint
from dcgan_lightning.resume import find_last

log = logging.getLogger(__name__)

CONFIG_PATH = str(CONF_DIR)  # conf/ in a checkout, dcgan_lightning/conf in a wheel

FORMATS = ("safetensors", "onnx")
SAMPLES = "samples.png"
CARD = "README.md"
OUTPUTS = Path("outputs")  # where training writes runs (conf/hydra/default.yaml)
# Data settings that say how batches are served, not what the data is: left out of the card.
LOADER_KEYS = {"batch_size", "num_workers", "cache_dir", "download", "on_device",
               "device_memory_fraction"}  # fmt: skip


def resolve_checkpoint(ckpt_path: str, task_name: str | None) -> Path:
    """A path as given; `last`: the newest `last.ckpt` under outputs/<task_name>/ (any task when
    task_name is null), found as `ckpt_path=last` finds the one to resume."""
    if ckpt_path != "last":
        return Path(ckpt_path)
    tasks = [OUTPUTS / task_name] if task_name else sorted(OUTPUTS.glob("*"))
    found = [path for task in tasks if (path := find_last(task)) is not None]
    if not found:
        where = OUTPUTS / task_name if task_name else OUTPUTS / "*"
        raise UserError(f"ckpt_path=last: no runs/*/checkpoints/last.ckpt under {where}")
    return max(found, key=lambda p: p.stat().st_mtime)


def claim_folder(out: Path, overwrite: bool) -> None:
    """An empty (or new) folder to write; a used one only with overwrite=true, then emptied of
    what an export writes (other files stay)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"out={out} is not empty: pass overwrite=true to replace the export")
        for name in (CONFIG, WEIGHTS, ONNX_GRAPH, SAMPLES, CARD):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


# -- the weights ------------------------------------------------------------------------------
def shared_config(generator: TrainedGenerator, hparams: dict[str, Any]) -> dict[str, Any]:
    """config.json: the arguments of `PretrainedGenerator.__init__` that rebuild `generator`,
    loaded from a checkpoint with hyperparameters `hparams`."""
    conditional = hparams.get("conditional")
    if conditional is not None:
        conditional = {k: conditional[k] for k in ("generator", "embed_dim") if k in conditional}
    return {
        "z_dim": generator.z_dim,
        "image_size": generator.image_size,
        "channels": generator.channels,
        "noise": generator.noise,
        "generator": dict(hparams["generator"]),
        "conditional": conditional,
        "class_names": generator.class_names,
        "ema": generator.ema,
    }


def write_safetensors(generator: TrainedGenerator, out: Path) -> None:
    """model.safetensors: the bare generator's state dict (keys as `Generator.state_dict()`)."""
    require("hub", "safetensors")
    import safetensors.torch

    safetensors.torch.save_model(generator.net, str(out / WEIGHTS), metadata={"format": "pt"})


def write_onnx(generator: TrainedGenerator, out: Path) -> None:
    """model.onnx: z (batch, z_dim) float32 [and labels (batch,) int64] -> images (batch, C, H,
    W) in [-1, 1], the batch axis dynamic. torch.export-based exporter (onnxscript), offline."""
    require("onnx", "onnx", "onnxscript")
    net = generator.net.float().cpu().eval()
    batch = torch.export.Dim("batch", min=1)
    z = torch.zeros(2, generator.z_dim)
    args: tuple[torch.Tensor, ...] = (z,)
    names, shapes = ["z"], {"z": {0: batch}}
    if generator.class_names is not None:
        args += (torch.zeros(2, dtype=torch.long),)
        names.append("labels")
        shapes["y"] = {0: batch}  # ConditionalGenerator.forward(z, y)
    with warnings.catch_warnings():  # z and labels share the batch axis: it keeps one name
        warnings.filterwarnings("ignore", message=r".*shares the same shape constraints")
        torch.onnx.export(net, args, str(out / ONNX_GRAPH), input_names=names,
                          output_names=["images"], dynamo=True, dynamic_shapes=shapes,
                          external_data=False, verbose=False)  # fmt: skip


# -- the model card ---------------------------------------------------------------------------
def sample_grid(generator: TrainedGenerator, count: int, seed: int) -> tuple[Image.Image, str]:
    """`count` samples in rows of sqrt(count), drawn as `generate` draws them (image i: the i-th
    z of `seed`); a conditional generator: one such row per class, the same z in each column."""
    rng = torch.Generator().manual_seed(seed)
    names = generator.class_names
    per_row = math.ceil(math.sqrt(count))
    z = generator.sample_noise(per_row if names else count, rng)
    with torch.inference_mode():
        if names:
            batches = [generator(z, torch.full((len(z),), k)) for k in range(len(names))]
            images = torch.cat(batches)
        else:
            images = generator(z)
    caption = f"{len(images)} samples, seed {seed}"
    if names:
        caption += f", a row per class ({', '.join(names)})"
    return grid(to_pil(to_uint8(images)), per_row), caption


def run_dir_of(ckpt: Path) -> Path | None:
    """The training run that wrote `ckpt` (`<run>/checkpoints/x.ckpt`), if it is one."""
    run = ckpt.resolve().parent.parent
    return run if ckpt.resolve().parent.name == "checkpoints" else None


def run_record(run: Path | None) -> dict[str, Any]:
    """What the run directory tells about training: final metrics, the command's overrides and
    the data config (each absent when the run did not write it)."""
    if run is None:
        return {}
    record: dict[str, Any] = {}
    if (run / "metrics.json").is_file():
        record["metrics"] = json.loads((run / "metrics.json").read_text()).get("metrics") or {}
    if (run / ".hydra" / "overrides.yaml").is_file():
        record["overrides"] = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    for config in (run / "config.yaml", run / ".hydra" / "config.yaml"):
        if config.is_file():
            data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
            record["data"] = {k: v for k, v in data.items() if k not in LOADER_KEYS}
            break
    return record


def card_metadata(generator: TrainedGenerator, record: dict[str, Any], license_id: str) -> str:
    """The card's YAML header, read by the Hub (library, license, tags, pipeline, datasets)."""
    conditional = generator.class_names is not None
    meta: dict[str, Any] = {
        "library_name": "dcgan_lightning",
        "license": license_id,
        "tags": ["dcgan", "gan", "image-generation", "pytorch", "model_hub_mixin",
                 "class-conditional" if conditional else "unconditional-image-generation"],
        "pipeline_tag": "unconditional-image-generation",
    }  # fmt: skip
    name = (record.get("data") or {}).get("name")
    if isinstance(name, str) and is_hub_id(name):  # data=hub: the Hub dataset trained on
        meta["datasets"] = [name]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def usage(generator: TrainedGenerator, ref: str, fmt: str) -> str:
    """How to load the export: the CLI and a few lines of Python with no Lightning or Hydra."""
    names = generator.class_names
    if fmt == "onnx":
        draw = (
            "rng.uniform(-1, 1, (16, {z})).astype(np.float32)"
            if generator.noise == "uniform"
            else "rng.standard_normal((16, {z}), dtype=np.float32)"
        ).format(z=generator.z_dim)
        feeds = '{"z": z, "labels": np.full(16, 0, dtype=np.int64)}' if names else '{"z": z}'
        graph, fetch = f'"{ref}/{ONNX_GRAPH}"', ""
        if is_hub_id(ref):
            graph = "path"
            fetch = (
                "from huggingface_hub import hf_hub_download\n\n"
                f'path = hf_hub_download("{ref}", "{ONNX_GRAPH}")\n'
            )
        return (
            "With onnxruntime (`pip install onnxruntime`), no PyTorch needed:\n\n```python\n"
            f"import numpy as np\nimport onnxruntime as ort\n{fetch}\n"
            f"session = ort.InferenceSession({graph})\n"
            f"rng = np.random.default_rng(0)\nz = {draw}  # the training noise law\n"
            f"images = session.run(None, {feeds})[0]  # (16, {generator.channels}, "
            f"{generator.image_size}, {generator.image_size}) in [-1, 1]\n```\n"
            + ("\n`labels`: class indices, see `class_names` in config.json.\n" if names else "")
        )
    labels = (
        f'labels = torch.full((16,), G.label_index("{names[0]}"))\nimages = G(z, labels)'
        if names
        else "images = G(z)"
    )
    return (
        "Install the framework with its Hub extra: `pip install 'dcgan_lightning[hub]'`.\n\n"
        "Images from the command line (the same seeds give the same images as the checkpoint):\n\n"
        f"```bash\npython -m dcgan_lightning.generate ckpt_path={ref} grid=true num_images=16 "
        "out=samples\n```\n\n"
        "In Python, without Lightning or Hydra:\n\n```python\nimport torch\n"
        "from dcgan_lightning.generation.pretrained import PretrainedGenerator\n\n"
        f'G = PretrainedGenerator.from_pretrained("{ref}")\n'
        "z = G.sample_noise(16, torch.Generator().manual_seed(0))  # the training noise law\n"
        f"{labels}  # (16, {generator.channels}, {generator.image_size}, "
        f"{generator.image_size}) in [-1, 1]\n```\n\n"
        f"The weights in `{WEIGHTS}` are those of the bare `dcgan_lightning.models.generator."
        f"{'ConditionalGenerator' if names else 'Generator'}` built from `{CONFIG}`.\n"
    )


def model_card(
    generator: TrainedGenerator,
    ckpt: dict[str, Any],
    ckpt_path: Path,
    record: dict[str, Any],
    caption: str,
    cfg: DictConfig,
    ref: str,
) -> str:
    """README.md: Hub metadata, samples, the model, its data, training and how to load it."""
    names, side = generator.class_names, generator.image_size
    kind = "class-conditional DCGAN" if names else "DCGAN"
    params = sum(p.numel() for p in generator.net.parameters())
    settings = ", ".join(f"{k} {v}" for k, v in ckpt["hyper_parameters"]["generator"].items())
    title = ref.rsplit("/", 1)[-1]
    rows = [
        ("Images", f"{generator.channels} x {side} x {side}, in [-1, 1]"),
        ("Latent z", f"{generator.z_dim} values, {generator.noise} noise"),
        ("Generator", f"{settings}; {params / 1e6:.2f} M parameters"),
        ("Weights", "EMA (exponential moving average)" if generator.ema else "raw (no EMA)"),
        (
            "Checkpoint",
            f"`{ckpt_path.name}`: epoch {ckpt.get('epoch')}, global step "
            f"{ckpt.get('global_step')} (Lightning's count: G and D steps)",
        ),
    ]
    if names:
        rows.insert(2, ("Classes", ", ".join(f"{i} {n}" for i, n in enumerate(names))))
    lines = [
        card_metadata(generator, record, cfg.license),
        f"# {title}\n",
        f"A {kind} generator of {side} px images, trained and exported with dcgan_lightning.\n",
        f"![samples]({SAMPLES})\n",
        f"*{caption}.*\n",
        "## Model\n",
        "| | |\n|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "## Training data\n",
    ]
    data = record.get("data")
    if data:
        target = str(data.get("_target_", "")).rsplit(".", 1)[-1]
        settings_yaml = yaml.safe_dump({k: v for k, v in data.items() if k != "_target_"})
        lines += [f"`{target}` with these settings:\n", f"```yaml\n{settings_yaml}```\n"]
    else:
        lines.append("Not recorded (the checkpoint was not in a training run directory).\n")
    lines.append("## Training command\n")
    if "overrides" in record:
        command = " ".join(["python -m dcgan_lightning", *map(str, record["overrides"])])
        lines.append(f"```bash\n{command}\n```\n")
    else:
        lines.append("Not recorded (no .hydra/overrides.yaml in the run directory).\n")
    lines.append("## Final metrics\n")
    metrics = record.get("metrics")
    if metrics:
        values = {k: f"{v:.4g}" if isinstance(v, (int, float)) else v for k, v in metrics.items()}
        lines += ["| metric | value |\n|---|---|", *(f"| {k} | {v} |" for k, v in
                                                    sorted(values.items())), ""]  # fmt: skip
    else:
        lines.append("Not recorded (no metrics.json in the run directory).\n")
    lines += ["## How to use\n", usage(generator, ref, cfg.format)]
    return "\n".join(lines)


# -- the Hub ----------------------------------------------------------------------------------
def push(out: Path, repo_id: str, private: bool) -> str:
    """Upload the folder to Hub model repo `repo_id` (created if needed); the commit's URL."""
    require("hub", "huggingface_hub")
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    later = f"the export in {out} is complete: push it later with `hf upload {repo_id} {out}`"
    if get_token() is None:
        raise UserError(
            f"push_to_hub={repo_id} needs a Hugging Face token with write access: run "
            f"`hf auth login` or set HF_TOKEN; {later}"
        )
    api = HfApi()
    try:
        repo = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo.repo_id, folder_path=out, repo_type="model",
                                   commit_message="Upload a dcgan_lightning generator")  # fmt: skip
    except HfHubHTTPError as e:
        raise UserError(f"the Hub refused push_to_hub={repo_id} ({e}); {later}") from e
    except (OSError, HTTPError) as e:  # no network, HF_HUB_OFFLINE=1
        raise UserError(f"cannot reach the Hugging Face Hub ({e}); {later}") from e
    url = str(getattr(commit, "commit_url", commit))
    log.info("Pushed %s to %s", out, url)
    return url


def export(cfg: DictConfig) -> Path:
    """Write the model folder that `cfg` asks for (and push it); return the folder."""
    if cfg.format not in FORMATS:
        raise UserError(f"format must be one of {FORMATS}, got {cfg.format!r}")
    if cfg.push_to_hub is not None and not is_hub_id(cfg.push_to_hub):
        raise UserError(f"push_to_hub takes a Hub id USER/NAME, got {cfg.push_to_hub!r}")
    ckpt_path = resolve_checkpoint(str(cfg.ckpt_path), cfg.task_name)
    ckpt = read_checkpoint(ckpt_path)
    generator = load_generator(ckpt_path, "cpu", cfg.ema)
    out = Path(cfg.out)
    claim_folder(out, cfg.overwrite)
    config = shared_config(generator, ckpt["hyper_parameters"])
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if cfg.format == "onnx":
        write_onnx(generator, out)
    else:
        write_safetensors(generator, out)
    image, caption = sample_grid(generator, cfg.samples, cfg.seed)
    (out / SAMPLES).write_bytes(encode(image, "png"))
    ref = cfg.push_to_hub or str(out)
    record = run_record(run_dir_of(ckpt_path))
    card = model_card(generator, ckpt, ckpt_path, record, caption, cfg, ref)
    (out / CARD).write_text(card)
    log.info("Exported %s (%s weights) to %s", ckpt_path, "EMA" if generator.ema else "raw", out)
    if cfg.push_to_hub is not None:
        push(out, cfg.push_to_hub, cfg.private)
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
def main(cfg: DictConfig) -> None:
    """Export; a mistake (a missing checkpoint, no Hub token) is one message, exit 2."""
    run_task(export, cfg)


if __name__ == "__main__":
    run_cli(main, "export", CONFIG_PATH)
