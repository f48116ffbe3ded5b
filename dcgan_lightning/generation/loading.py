"""Load the generator of a training checkpoint, rebuilt from the hyperparameters saved in it."""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcgan_lightning.errors import MissingFileError, UserValueError
from dcgan_lightning.generation.noise import NOISES, draw_noise
from dcgan_lightning.models.conditional import ConditionalGenerator
from dcgan_lightning.models.generator import Generator

log = logging.getLogger(__name__)

REQUIRED_HPARAMS = ("image_size", "channels", "z_dim", "noise", "generator")
EMA_PREFIX = "ema_generator.module."
RAW_PREFIX = "generator."


class CheckpointError(UserValueError):
    """The file is not a checkpoint of a GAN trained by this project (a `UserError`: the command
    line prints its message alone, exit status 2)."""


class TrainedGenerator(nn.Module):
    """A trained generator with what sampling it needs: z size and the training noise law.

    `forward(z)` gives images in [-1, 1]; `sample_noise` draws z as training did (N(0, 1) or
    U(-1, 1)), optionally truncated, one row at a time from a CPU generator, so that image i of a
    seed is the same whatever the batch size or device.
    """

    def __init__(
        self,
        net: Generator,
        noise: str,
        image_size: int,
        channels: int,
        ema: bool = False,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        self.net = net
        self.noise, self.image_size, self.channels = noise, image_size, channels
        self.ema = ema  # whether `net` holds EMA weights
        self.z_dim: int = net.z_dim
        self.class_names = class_names  # None: unconditional; else forward takes labels

    def label_index(self, label: int | str) -> int:
        """A class given by name or index, as its index; refused with the list of valid ones."""
        names = self.class_names
        if names is None:
            raise ValueError("this checkpoint's generator is unconditional: it takes no label")
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(names):
            return label
        wanted = str(label)
        for i, name in enumerate(names):
            if wanted in (name, safe_name(name)) or (wanted.isdigit() and int(wanted) == i):
                return i
        listed = ", ".join(f"{i}={name}" for i, name in enumerate(names))
        raise UserValueError(
            f"unknown label {label!r}: this generator's classes are {listed} (label= takes a "
            "name or an index)"
        )

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def sample_noise(
        self, n: int, generator: torch.Generator | None = None, truncation: float | None = None
    ) -> torch.Tensor:
        """z of shape (n, z_dim) on this module's device; row i is the i-th draw of `generator`.

        `truncation=psi` keeps z within +/-psi (see `generation.noise`); None: as in training.
        """
        return draw_noise(n, self.z_dim, self.noise, generator, truncation).to(self.device)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1]; a conditional generator needs `labels` (class indices, len(z))."""
        if self.class_names is None:
            return self.net(z.to(self.device)).float()
        if labels is None:
            raise ValueError("this generator is conditional: pass labels (class indices)")
        return self.net(z.to(self.device), labels.to(self.device)).float()


def safe_name(name: str) -> str:
    """A class name fit for a file name (`T-shirt/top` -> `T-shirt_top`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, with a clear error for a missing, foreign or non-checkpoint file."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.ckpt")) or sorted(path.glob("checkpoints/*.ckpt"))
        raise MissingFileError(
            f"ckpt_path={path} is a directory: pass a .ckpt file in it, e.g. "
            f"{found[0] if found else path / 'checkpoints' / 'last.ckpt'}"
        )
    if not path.is_file():
        raise MissingFileError(
            f"checkpoint {path} does not exist: pass a .ckpt written by training (a run's "
            "checkpoints/ folder, e.g. outputs/<task>/runs/<time>/checkpoints/last.ckpt)"
        )
    if not zipfile.is_zipfile(path):  # what torch.save (and so Lightning) has written since 1.6
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a torch.save archive)")
    try:
        # weights_only: a checkpoint is data; unpickling arbitrary objects could run code.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain Python types, which a "
            "dcgan_lightning checkpoint never does; not unpickling it, as that could run code"
        ) from e
    except (RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not isinstance(state, dict):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (no hyper_parameters/state_dict): "
            "pass a .ckpt written by `python -m dcgan_lightning`"
        )
    missing = [k for k in REQUIRED_HPARAMS if k not in hparams]
    if missing or not any(k.startswith(RAW_PREFIX) for k in state):
        raise CheckpointError(
            f"{path} is a Lightning checkpoint but not of a dcgan_lightning GAN "
            f"(missing hyperparameters {missing} or generator weights)"
        )
    return ckpt


def generator_state(ckpt: dict[str, Any], ema: bool) -> tuple[dict[str, torch.Tensor], bool]:
    """The generator weights to use, and whether they are the EMA ones."""
    state = ckpt["state_dict"]
    use_ema = ema and any(k.startswith(EMA_PREFIX) for k in state)
    prefix = EMA_PREFIX if use_ema else RAW_PREFIX
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}, use_ema


def load_generator(
    ckpt_path: str | Path, device: str | torch.device = "cpu", ema: bool = True
) -> TrainedGenerator:
    """The generator of a training checkpoint, in eval mode on `device`.

    `ema=True` takes the EMA weights when the run kept them (`model.ema`), else the raw ones.
    A conditional run's generator takes labels too (`class_names` lists its classes).
    `ckpt_path` may also be an exported model folder or a Hub id (`generation.hub`).
    """
    from dcgan_lightning.generation.hub import is_shared, load_shared  # its own imports are lazy

    if is_shared(ckpt_path):
        return load_shared(ckpt_path, device, ema)
    ckpt = read_checkpoint(ckpt_path)
    hp = ckpt["hyper_parameters"]
    conditional, names = hp.get("conditional"), None
    if conditional is not None:
        k = hp["num_classes"]
        names = list(ckpt.get("classes", {}).get("names") or map(str, range(k)))
        net = ConditionalGenerator(hp["z_dim"], hp["image_size"], hp["channels"], k,
                                   conditional.get("generator", "cbn"),
                                   conditional.get("embed_dim", 32), **hp["generator"])  # fmt: skip
    else:
        net = Generator(hp["z_dim"], hp["image_size"], hp["channels"], **hp["generator"])
    state, used_ema = generator_state(ckpt, ema)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{ckpt_path}: generator weights do not fit its hyperparameters"
        ) from e
    log.info("Loaded %s generator weights from %s", "EMA" if used_ema else "raw", ckpt_path)
    model = TrainedGenerator(net, hp["noise"], hp["image_size"], hp["channels"], used_ema, names)
    return model.to(device).eval()
