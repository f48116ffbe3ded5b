"""Where a shared generator lives: an exported model folder or a Hugging Face Hub model id.

An exported folder (`python -m dcgan_lightning.export`) holds `config.json` and the generator's
weights as `model.safetensors`; a Hub id (`USER/NAME`) is that folder uploaded. A Hub id is
downloaded once into the Hugging Face cache (`snapshot_download`) and read from there afterwards,
also offline (`HF_HUB_OFFLINE=1`). This module imports nothing of the `[hub]` extra until used.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dcgan_lightning.errors import UserError

if TYPE_CHECKING:
    from dcgan_lightning.generation.loading import TrainedGenerator

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
ONNX_GRAPH = "model.onnx"
# USER/NAME as the Hub spells repo ids; a checkpoint-like suffix means a missing file instead.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors", ".onnx")


def is_hub_id(source: str | Path) -> bool:
    """Whether `source` names a Hub model (`USER/NAME`) rather than a local file or folder."""
    text = str(source)
    return bool(HUB_ID.match(text)) and not Path(text).exists() and not text.endswith(FILE_SUFFIXES)


def is_shared(source: str | Path) -> bool:
    """A model folder or a Hub id, as opposed to a training checkpoint (a file)."""
    return Path(source).is_dir() or is_hub_id(source)


def require(extra: str, *modules: str) -> None:
    """Refuse, with the install command, when a module of an optional extra is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"this needs {', '.join(missing)} (the `{extra}` extra): "
            f"pip install -e '.[{extra}]'  (or pip install 'dcgan_lightning[{extra}]')"
        )


def fetch(repo_id: str) -> Path:
    """The local folder of Hub model `repo_id`: downloaded into the HF cache the first time, the
    cached copy afterwards (and whenever the network is off or HF_HUB_OFFLINE=1)."""
    require("hub", "huggingface_hub", "safetensors")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG, WEIGHTS]))
    except GatedRepoError as e:
        raise UserError(f"Hub model {repo_id} is gated: accept its terms on the Hub first") from e
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise UserError(
            f"no Hub model {repo_id} (or it is private: log in with `hf auth login`); "
            "a local path that does not exist is read as a Hub id"
        ) from e
    except LocalEntryNotFoundError as e:
        raise UserError(
            f"cannot download Hub model {repo_id}: no network (or HF_HUB_OFFLINE=1) and it is not "
            "in the Hugging Face cache yet; load it once while online"
        ) from e


def load_shared(
    source: str | Path, device: str | torch.device = "cpu", ema: bool = True
) -> TrainedGenerator:
    """The generator of an exported folder or Hub id, in eval mode on `device`.

    A folder holds one set of weights (the EMA ones where the run kept some), so `ema` has no
    effect here; it is accepted so that callers treat checkpoints and folders alike.
    """
    folder = Path(source) if Path(source).is_dir() else fetch(str(source))
    if not (folder / WEIGHTS).is_file():
        checkpoints = sorted(folder.glob("*.ckpt")) or sorted(folder.glob("checkpoints/*.ckpt"))
        if checkpoints:  # a run directory or its checkpoints/ folder
            raise UserError(
                f"{source} is not an exported model (no {WEIGHTS}): pass a checkpoint in it, "
                f"e.g. {checkpoints[-1]}"
            )
        onnx_only = (folder / ONNX_GRAPH).is_file()
        hint = " (an ONNX export: run it with onnxruntime)" if onnx_only else ""
        raise UserError(f"{source} has no {WEIGHTS}{hint}: export it with format=safetensors")
    require("hub", "huggingface_hub", "safetensors")
    from dcgan_lightning.generation.pretrained import PretrainedGenerator

    return PretrainedGenerator.from_pretrained(folder, map_location=str(torch.device(device)))
