"""`data=hub`: image sets read through `datasets`, built here as parquet files, an image folder and
a Hub id in the local Hub cache. Nothing downloads: the Hub is offline for every test."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from dcgan_lightning.data import cache
from dcgan_lightning.data.hub import HubDataModule
from dcgan_lightning.data.image_folder import ImageFolderDataModule
from dcgan_lightning.errors import UserError
from dcgan_lightning.train import train

datasets = pytest.importorskip("datasets")

CLASSES = ["cat", "dog", "wild"]
PER_CLASS = 16
COLOURS = {"cat": (220, 40, 40), "dog": (40, 220, 40), "wild": (40, 40, 220)}


def picture(label: str, i: int) -> Image.Image:
    """40x48 of the class colour with noise and a bright square whose place depends on `i`."""
    rng = np.random.default_rng(i)
    pixels = np.clip(np.array(COLOURS[label]) + rng.integers(-30, 30, (40, 48, 3)), 0, 255)
    pixels[(i % 4) * 8 : (i % 4) * 8 + 8, 10:18] = 255
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reaches the network, and `datasets` caches under tmp_path, not ~/.cache."""
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub_cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hub_cache)
    cache.clear_memory()
    return hub_cache


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 48 labelled pictures as parquet files and as an image folder (class subfolders),
    rows in the same order (cat 0-15, dog 0-15, wild 0-15)."""
    root = tmp_path_factory.mktemp("sets")
    rows = [(label, i) for label in CLASSES for i in range(PER_CLASS)]
    features = datasets.Features(
        {"picture": datasets.Image(), "animal": datasets.ClassLabel(names=CLASSES),
         "painter": datasets.Value("string")}
    )  # fmt: skip
    table = datasets.Dataset.from_dict(
        {"picture": [picture(label, i) for label, i in rows],
         "animal": [CLASSES.index(label) for label, _ in rows],
         "painter": ["monet" if i % 2 else "degas" for _, i in rows]},
        features=features,
    )  # fmt: skip
    (root / "parquet").mkdir()
    table.to_parquet(str(root / "parquet" / "train.parquet"))
    for label, i in rows:
        folder = root / "folder" / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        picture(label, i).save(folder / f"{i:02d}.png")
    return {"parquet": root / "parquet", "folder": root / "folder"}


def hub(name: Path | str, **kwargs) -> HubDataModule:
    options = {"image_size": 32, "batch_size": 8, "on_device": False} | kwargs
    if isinstance(name, Path) and (name / "train.parquet").is_file():
        options = {"image_column": "picture", "label_column": "animal"} | options
    module = HubDataModule(name=str(name), **options)
    module.prepare_data()
    module.setup("fit")
    return module


def dominant(images: torch.Tensor) -> list[str]:
    """Each image's class, from its strongest mean channel."""
    return [CLASSES[int(c)] for c in images.float().mean((2, 3)).argmax(1)]


def test_parquet_rows_decode_as_the_same_files_in_an_image_folder(sets, tmp_path) -> None:
    module = hub(sets["parquet"], labels=True, cache_dir=tmp_path / "decoded")
    assert module.class_names == CLASSES
    assert module.images.shape == (48, 3, 32, 32) and module.images.dtype == torch.uint8
    assert module.labels.tolist() == [c for c in range(3) for _ in range(PER_CLASS)]
    assert dominant(module.images) == [CLASSES[c] for c in module.labels]
    folder = ImageFolderDataModule(root=sets["folder"], image_size=32, batch_size=8, labels=True)
    folder.setup("fit")  # files sorted by path: the parquet's row order
    assert torch.equal(module.images, folder.images)  # one decoder: the same pixels
    from_folder = hub(sets["folder"], labels=True)  # `datasets`' imagefolder: image, label
    assert from_folder.class_names == CLASSES
    assert torch.equal(from_folder.images, folder.images)
    assert torch.equal(from_folder.labels, module.labels)


def test_filter_keeps_one_value_or_picks_classes_in_order(sets) -> None:
    dogs = hub(sets["parquet"], filter={"animal": "dog"})
    assert len(dogs.images) == PER_CLASS and set(dominant(dogs.images)) == {"dog"}
    by_index = hub(sets["parquet"], filter={"animal": 1})
    assert torch.equal(by_index.images, dogs.images)
    two = hub(sets["parquet"], labels=True, filter={"animal": ["wild", "cat"]})
    assert two.class_names == ["wild", "cat"] and len(two.images) == 2 * PER_CLASS
    assert dominant(two.images) == [two.class_names[c] for c in two.labels]
    monet_dogs = hub(
        sets["parquet"], filter={"animal": "dog", "painter": "monet"}, max_images=5, batch_size=4
    )
    assert len(monet_dogs.images) == 5
    assert torch.equal(monet_dogs.images, dogs.images[1::2][:5])  # odd i: monet
    by_painter = hub(sets["parquet"], labels=True, label_column="painter")
    assert by_painter.class_names == ["degas", "monet"]
    assert by_painter.labels.tolist() == [i % 2 for _ in CLASSES for i in range(PER_CLASS)]


def test_decoded_once_then_read_from_the_cache_until_the_data_changes(
    sets, tmp_path, monkeypatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(sets["parquet"], data)
    decoded = tmp_path / "decoded"
    first = hub(data, labels=True, cache_dir=decoded)
    assert len(list(decoded.glob("hub-data-*.pt"))) == 1
    cache.clear_memory()  # as a new process

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr("dcgan_lightning.data.decode.decode_images", no_decoding)
    again = hub(data, labels=True, cache_dir=decoded)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.fingerprint == first.fingerprint
    monkeypatch.undo()
    table = datasets.load_dataset(str(data), split="train").select(range(0, 48, 2))
    table.to_parquet(str(data / "train.parquet"))  # other data, same file name
    cache.clear_memory()
    changed = hub(data, labels=True, cache_dir=decoded)
    assert len(changed.images) == 24 and changed.fingerprint != first.fingerprint
    assert len(list(decoded.glob("hub-data-*.pt"))) == 1  # the stale entry replaced


def test_a_hub_id_loads_offline_from_the_local_hub_cache(sets, offline_hub) -> None:
    """A set downloaded once (here: put where `datasets` keeps Hub sets) needs no network."""
    built = datasets.load_dataset(str(sets["parquet"]), split="train")
    source = Path(built.cache_files[0]["filename"]).parent
    target = offline_hub / "someone___tiny-animals" / "default" / "0.0.0" / "0123abcd"
    target.mkdir(parents=True)
    for path in source.iterdir():
        shutil.copy(path, target / path.name.replace("parquet-", "tiny-animals-"))
    module = hub("someone/tiny-animals", image_column="picture", label_column="animal",
                 labels=True, filter={"animal": ["dog"]})  # fmt: skip
    assert module.class_names == ["dog"] and set(dominant(module.images)) == {"dog"}


def test_each_mistake_has_one_message(sets, monkeypatch) -> None:
    pq = sets["parquet"]
    with pytest.raises(UserError, match=r"cannot reach the Hugging Face Hub.*HF_HUB_OFFLINE"):
        hub("someone/not-downloaded")
    with pytest.raises(UserError, match=r"no such column; its columns: picture \(Image\), "
                       r"animal \(ClassLabel: cat, dog, wild\), painter \(string\)"):  # fmt: skip
        hub(pq, image_column="image")
    with pytest.raises(UserError, match=r"data.label_column=label: .* its columns: picture"):
        hub(pq, label_column="label", labels=True)
    with pytest.raises(UserError, match=r"data.image_column=painter holds .*string.*not images"):
        hub(pq, image_column="painter")
    with pytest.raises(UserError, match=r"data.split=test .*Unknown split"):
        hub(pq, split="test")
    with pytest.raises(UserError, match=r"animal='horse' is not one of its classes: cat, dog"):
        hub(pq, filter={"animal": "horse"})
    with pytest.raises(UserError, match=r"no row .* has painter in \['turner'\]; its values: "
                       r"degas, monet"):  # fmt: skip
        hub(pq, filter={"painter": "turner"})
    with pytest.raises(UserError, match=r"data.name=.*nowhere.*local folder"):
        hub(pq.parent / "nowhere")

    def not_on_the_hub(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError(
            "Dataset 'someone/typo' doesn't exist on the Hub or cannot be accessed."
        )

    monkeypatch.setattr(datasets, "load_dataset", not_on_the_hub)
    with pytest.raises(UserError, match=r"doesn't exist on the Hub.*Check the name"):
        hub("someone/typo")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(UserError, match=r"not installed: pip install 'dcgan_lightning\[hub\]'"):
        hub(pq)


@pytest.mark.slow
def test_trains_from_parquet_with_a_holdout(sets, make_cfg) -> None:
    cfg = make_cfg("data=hub", f"data.name={sets['parquet']}", "data.image_column=picture",
                   "data.image_size=32", "data.holdout=8", "logger=csv")  # fmt: skip
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "checkpoints" / "last.ckpt").is_file() and "train/loss_d_epoch" in metrics
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 * 2  # two batches of 16 from the 40 kept


def test_trains_a_conditional_model_from_an_image_folder(sets, make_cfg) -> None:
    cfg = make_cfg("model=cdcgan", "data=hub", f"data.name={sets['folder']}", "data.labels=true",
                   "data.image_size=32", "logger=none", "metrics=none")  # fmt: skip
    with open_dict(cfg):
        cfg.data.filter = {"label": ["dog", "wild"]}
    train(cfg)
    saved = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["classes"] == {"names": ["dog", "wild"], "counts": [PER_CLASS, PER_CLASS]}
    assert saved["hyper_parameters"]["num_classes"] == 2


def test_an_experiment_for_an_image_folder_runs_on_hub_data(sets, make_cfg) -> None:
    """`+experiment=animals data=hub`: the experiment's size, batch and flips stay; where its
    image folder lives (root, folder, kaggle) means nothing here."""
    from hydra.utils import instantiate

    cfg = make_cfg("+experiment=animals", "data=hub", f"data.name={sets['folder']}", shrink=False)
    assert cfg.data.kaggle.handle  # the experiment's, merged into data=hub's settings
    module = instantiate(cfg.data)
    assert (module.image_size, module.batch_size, module.flip) == (64, 128, True)
    assert module.name == str(sets["folder"].resolve())
    cfg = make_cfg("+experiment=artists", "data=hub", f"data.name={sets['folder']}",
                   "+data.classes=[dog]", shrink=False)  # fmt: skip
    with pytest.raises(Exception, match=r"data.classes is an image folder's setting: with "
                       r"data=hub use data.filter=\{LABEL_COLUMN: \[...\]\}"):  # fmt: skip
        instantiate(cfg.data)
