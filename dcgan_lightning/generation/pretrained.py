"""A trained generator that loads from an exported folder or the Hub without Lightning or Hydra.

`PretrainedGenerator.from_pretrained("USER/NAME" or DIR)` is huggingface_hub's
`PyTorchModelHubMixin` loader: it reads `config.json` into `__init__`'s arguments and the bare
generator's weights from `model.safetensors`. The result is a `TrainedGenerator`: it samples z as
training did (`sample_noise`), takes class labels when conditional, and gives images in [-1, 1].
Needs the `[hub]` extra (huggingface_hub, safetensors); imports torch and this package's models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download

from dcgan_lightning.generation.hub import CONFIG, WEIGHTS
from dcgan_lightning.generation.loading import CheckpointError, TrainedGenerator
from dcgan_lightning.models.conditional import ConditionalGenerator
from dcgan_lightning.models.generator import Generator


def build_net(
    z_dim: int,
    image_size: int,
    channels: int,
    generator: dict[str, Any],
    conditional: dict[str, Any] | None,
    num_classes: int,
) -> Generator:
    """The untrained generator network that a config.json describes."""
    if conditional is None:
        return Generator(z_dim, image_size, channels, **generator)
    return ConditionalGenerator(z_dim, image_size, channels, num_classes,
                                conditional.get("generator", "cbn"),
                                conditional.get("embed_dim", 32), **generator)  # fmt: skip


class PretrainedGenerator(
    TrainedGenerator,
    PyTorchModelHubMixin,
    library_name="dcgan_lightning",
    tags=["dcgan", "gan", "image-generation"],
):
    """A `TrainedGenerator` rebuilt from config.json; weights from model.safetensors.

    `G = PretrainedGenerator.from_pretrained("USER/NAME")` (or a folder), then
    `G(G.sample_noise(16, torch.Generator().manual_seed(0)))` gives 16 images in [-1, 1]
    (a conditional G takes `labels` too: class indices, see `G.class_names`).
    """

    def __init__(
        self,
        z_dim: int,
        image_size: int,
        channels: int,
        noise: str = "normal",
        generator: dict[str, Any] | None = None,
        conditional: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        ema: bool = False,
    ) -> None:
        if (conditional is None) != (class_names is None):
            raise ValueError("a conditional generator needs class_names, an unconditional none")
        num_classes = len(class_names or [])
        net = build_net(z_dim, image_size, channels, generator or {}, conditional, num_classes)
        super().__init__(net, noise, image_size, channels, ema, class_names)

    def _save_pretrained(self, save_directory: Path) -> None:
        """The bare generator's weights, so that `Generator(...).load_state_dict` reads them."""
        safetensors.torch.save_model(self.net, str(Path(save_directory) / WEIGHTS))

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        **model_kwargs: Any,
    ) -> PretrainedGenerator:
        """Strict loading (the mixin's default is not): weights that do not fit the config fail."""
        if os.path.isdir(model_id):
            weights = os.path.join(model_id, WEIGHTS)
        else:
            weights = hf_hub_download(
                model_id,
                WEIGHTS,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        if not model_kwargs:
            raise ValueError(f"{model_id} has no {CONFIG}: it is not an exported generator")
        model = cls(**model_kwargs)
        try:
            safetensors.torch.load_model(model.net, weights, strict=True, device=map_location)
        except RuntimeError as e:
            raise CheckpointError(f"{model_id}: {WEIGHTS} does not fit its {CONFIG}") from e
        return model.to(map_location).eval()
