"""Datamodules against fixtures in the real on-disk formats; the decoded-image cache; bad input."""

from __future__ import annotations

import gzip
import logging
import os
import random
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from dcgan_lightning.data import cache, decode, download
from dcgan_lightning.data.base import ImageDataModule
from dcgan_lightning.data.celeba import CelebADataModule
from dcgan_lightning.data.download import MissingDataError
from dcgan_lightning.data.fashion_mnist import FashionMNISTDataModule
from dcgan_lightning.data.image_folder import ImageFolderDataModule
from dcgan_lightning.errors import UserError

RNG = np.random.default_rng(0)


# -- fixture writers (also used by test_experiments) -------------------------------------------
def write_idx(path: Path, images: np.ndarray, gz: bool = False) -> Path:
    """uint8 (N, H, W) as an IDX3 file, as Fashion-MNIST ships it."""
    n, h, w = images.shape
    data = b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (n, h, w))
    data += images.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_images(folder: Path, n: int, size: tuple[int, int] = (40, 48), ext: str = "jpg") -> None:
    """`n` random RGB images (width, height) `size` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.{ext}")


def write_celeba(root: Path, splits: list[int], kaggle: bool = False) -> None:
    """Aligned-face layout: 178x218 JPEGs, red bands outside the centre 178x178 square, which is
    blue around a green centre 100x100 square; plus the partition file (torchvision's txt, or
    Kaggle's CSV with its nested image folder)."""
    images = root / "img_align_celeba" / ("img_align_celeba" if kaggle else "")
    images.mkdir(parents=True, exist_ok=True)
    face = np.zeros((218, 178, 3), np.uint8)
    face[:20] = face[-20:] = (255, 0, 0)
    face[20:-20] = (0, 0, 255)
    face[59:159, 39:139] = (0, 255, 0)
    lines = ["image_id,partition"] if kaggle else []
    for i, split in enumerate(splits):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(face).save(images / name, quality=95)
        lines.append(f"{name},{split}" if kaggle else f"{name} {split}")
    partition = root / ("list_eval_partition.csv" if kaggle else "list_eval_partition.txt")
    partition.write_text("\n".join(lines) + "\n")


def write_mixed_folder(root: Path) -> None:
    """A nested JPEG, grayscale, RGBA (fully transparent) and palette PNGs, and a corrupt file."""
    write_images(root / "nested" / "deeper", 1)
    Image.fromarray(RNG.integers(0, 256, (30, 40), dtype=np.uint8), "L").save(root / "gray.png")
    Image.new("RGBA", (40, 30), (10, 200, 30, 0)).save(root / "rgba.png")
    Image.fromarray(RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)).convert("P").save(
        root / "palette.png"
    )
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "notes.txt").write_text("not an image: ignored")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every socket connection attempt is recorded and refused: nothing is downloaded."""
    attempts: list = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    cache.clear_memory()


def batch_of(dm) -> torch.Tensor:
    loader = dm.train_dataloader()
    return dm.on_after_batch_transfer(next(iter(loader)), 0)


# -- Fashion-MNIST ----------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_reads_idx_files_and_resizes(tmp_path: Path, gz: bool) -> None:
    source = RNG.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte", source, gz=gz)
    dm = FashionMNISTDataModule(root=tmp_path, image_size=32, channels=1, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.images.shape == (40, 1, 32, 32) and dm.images.dtype == torch.uint8
    # Bilinear upsampling keeps each image's mean brightness.
    means = dm.images.float().mean((1, 2, 3))
    torch.testing.assert_close(means, torch.from_numpy(source).float().mean((1, 2)), atol=1, rtol=0)
    batch = batch_of(dm)
    assert batch.shape == (16, 1, 32, 32) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1 and batch.min() < -0.9 and batch.max() > 0.9
    assert len(dm.train_dataloader()) == 40 // 16  # drop_last


def test_fashion_mnist_all_splits_and_flat_layout_and_3_channels(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((20, 28, 28)), gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((12, 28, 28), 255))
    dm = FashionMNISTDataModule(root=tmp_path, split="all", image_size=64, channels=3, batch_size=8)
    images = dm.load_images()
    assert images.shape == (32, 3, 64, 64)
    assert (images[:20] == 0).all() and (images[20:] == 255).all()


def test_fashion_mnist_bad_idx_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"short")
    dm = FashionMNISTDataModule(root=tmp_path, image_size=32, channels=1, batch_size=4)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: 5 bytes of pixels"):
        dm.load_images()


def test_fashion_mnist_missing_without_download(tmp_path: Path, no_network: list) -> None:
    dm = FashionMNISTDataModule(root=tmp_path, download=False, channels=1, batch_size=4)
    dm.prepare_data()  # nothing to do, nothing fetched
    with pytest.raises(MissingDataError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "data.download=true" in message
    assert "curl -O http://fashion-mnist" in message and "FashionMNIST(" in message
    assert no_network == [] and not any(tmp_path.iterdir())


def test_fashion_mnist_failed_download_says_how(tmp_path, monkeypatch, no_network) -> None:
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    dm = FashionMNISTDataModule(root=tmp_path, channels=1, batch_size=4)
    with pytest.raises(MissingDataError, match="download failed") as error:
        dm.prepare_data()
    assert str(tmp_path) in str(error.value) and "curl -O" in str(error.value)
    assert no_network == []


# -- image folder ------------------------------------------------------------------------------
def test_image_folder_modes_nesting_and_corrupt_file(tmp_path: Path, caplog) -> None:
    write_mixed_folder(tmp_path / "imgs")
    dm = ImageFolderDataModule(root=tmp_path / "imgs", image_size=32, batch_size=2)
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
        dm.setup("fit")
    assert dm.images.shape == (4, 3, 32, 32) and dm.images.dtype == torch.uint8
    assert dm.skipped == ["corrupt.jpg"]
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "corrupt.jpg" in warnings[0]  # reported once, by name
    # Sorted order: corrupt (skipped), gray, nested/deeper/000.jpg, palette, rgba.
    gray, rgba = dm.images[0], dm.images[3]
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()
    assert (rgba == 255).all()  # transparent pixels composite on white
    batch = batch_of(dm)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1


def test_image_folder_resizes_short_side_and_centre_crops(tmp_path: Path) -> None:
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, :32], wide[:, 32:64], wide[:, 64:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    for channels in (3, 1):
        dm = ImageFolderDataModule(root=tmp_path, image_size=32, channels=channels, batch_size=1)
        image = dm.load_images()[0].float()
        assert image.shape == (channels, 32, 32)
        inner = image[:, :, 2:-2]  # away from the resampling filter's reach
        expected = torch.tensor([0, 255, 0]) if channels == 3 else torch.tensor([150])
        torch.testing.assert_close(inner.mean((1, 2)), expected.float(), atol=2, rtol=0)


def test_no_readable_image_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"No readable image in .*empty: 0 file"):
        ImageFolderDataModule(root=tmp_path / "empty", batch_size=1).load_images()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"No readable image in .*bad: 1 file.*1 of them unread"):
        ImageFolderDataModule(root=tmp_path / "bad", batch_size=1).load_images()


def test_fuzz_bad_files_are_skipped_and_counted(tmp_path: Path) -> None:
    rng = random.Random(0)
    write_images(tmp_path, 6, size=(50, 40))
    good = 6
    jpeg = (tmp_path / "000.jpg").read_bytes()
    bad = 0
    for i in range(12):  # random bytes under image names
        name = f"random{i}.{rng.choice(['jpg', 'png', 'webp', 'bmp'])}"
        (tmp_path / name).write_bytes(rng.randbytes(rng.randint(0, 4000)))
        bad += 1
    for i in range(8):  # JPEGs cut short anywhere from the header to the last scan lines
        cut = rng.randint(0, int(len(jpeg) * 0.8))
        (tmp_path / f"truncated{i}.jpg").write_bytes(jpeg[:cut])
        bad += 1
    (tmp_path / "header_png_body_jpeg.png").write_bytes(b"\x89PNG\r\n\x1a\n" + jpeg[2:])
    bad += 1
    wrong_modes = {  # readable, in modes a converter must handle
        "cmyk.jpg": Image.new("CMYK", (40, 30), (0, 50, 100, 0)),
        "sixteen.png": Image.fromarray(np.full((30, 40), 60000, np.uint16)),
        "bilevel.bmp": Image.new("1", (40, 30), 1),
        "gray_alpha.png": Image.new("LA", (40, 30), (80, 255)),
        "transparent_palette.png": Image.new("P", (40, 30), 3),
        "rgba.webp": Image.new("RGBA", (40, 30), (0, 0, 0, 128)),
    }
    wrong_modes["transparent_palette.png"].info["transparency"] = 3
    for name, image in wrong_modes.items():
        image.save(tmp_path / name)
        good += 1
    for channels in (3, 1):
        dm = ImageFolderDataModule(root=tmp_path, image_size=32, channels=channels, batch_size=4)
        dm.setup("fit")
        assert len(dm.skipped) == bad and len(dm.images) == good
        assert all(name.startswith(("random", "truncated", "header")) for name in dm.skipped)


def test_folder_found_at_any_depth(tmp_path: Path) -> None:
    write_images(tmp_path / "images" / "images" / "Pablo_Picasso", 3)
    write_images(tmp_path / "resized" / "Other", 5)
    dm = ImageFolderDataModule(root=tmp_path, folder="Pablo_Picasso", image_size=32, batch_size=1)
    assert len(dm.load_images()) == 3
    missing = ImageFolderDataModule(root=tmp_path, folder="Rembrandt", batch_size=1)
    with pytest.raises(MissingDataError, match=r"Folder 'Rembrandt' not found at"):
        missing.load_images()


def test_max_images_takes_the_first_files(tmp_path: Path) -> None:
    write_images(tmp_path, 5)
    dm = ImageFolderDataModule(root=tmp_path, max_images=3, image_size=32, batch_size=1)
    full = ImageFolderDataModule(root=tmp_path, image_size=32, batch_size=1)
    assert torch.equal(dm.load_images(), full.load_images()[:3])


# -- decoded-image cache -----------------------------------------------------------------------
@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = decode.decode_image

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode, "decode_image", counting)
    return calls


def test_second_setup_decodes_nothing(tmp_path: Path, decode_calls: list[Path]) -> None:
    write_images(tmp_path / "imgs", 6)
    make = lambda: ImageFolderDataModule(  # noqa: E731
        root=tmp_path / "imgs", cache_dir=tmp_path / "cache", image_size=32, batch_size=2
    )
    first = make()
    first.prepare_data()
    first.setup("fit")
    assert len(decode_calls) == 6 and len(list((tmp_path / "cache").glob("*.pt"))) == 1
    second = make()  # same process: the in-memory entry
    second.setup("fit")
    cache.clear_memory()
    third = make()  # a new process: the disk entry
    third.prepare_data()
    third.setup("fit")
    assert len(decode_calls) == 6
    assert torch.equal(first.images, second.images) and torch.equal(first.images, third.images)
    assert first.fingerprint == third.fingerprint


def test_changed_file_or_size_invalidates_the_cache(tmp_path, decode_calls) -> None:
    write_images(tmp_path / "imgs", 4)
    make = lambda size=32: ImageFolderDataModule(  # noqa: E731
        root=tmp_path / "imgs", cache_dir=tmp_path / "cache", image_size=size, batch_size=2
    )
    before = make().load_images().clone()
    fingerprint = make().fingerprint
    changed = tmp_path / "imgs" / "002.jpg"
    Image.new("RGB", (40, 48), (255, 255, 255)).save(changed)
    os.utime(changed, ns=(1, 1))  # a distinct mtime whatever the filesystem's resolution
    cache.clear_memory()
    after = make().load_images()
    assert len(decode_calls) == 8 and make().fingerprint != fingerprint
    assert torch.equal(after[[0, 1, 3]], before[[0, 1, 3]]) and (after[2] >= 250).all()
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # the stale entry is gone
    make(64).load_images()
    assert len(decode_calls) == 12


def test_damaged_cache_file_is_a_miss(tmp_path, decode_calls) -> None:
    write_images(tmp_path / "imgs", 2)
    dm = ImageFolderDataModule(root=tmp_path / "imgs", cache_dir=tmp_path / "c", batch_size=1)
    dm.load_images()
    for entry in (tmp_path / "c").glob("*.pt"):
        entry.write_bytes(b"truncated")
    cache.clear_memory()
    fresh = ImageFolderDataModule(root=tmp_path / "imgs", cache_dir=tmp_path / "c", batch_size=1)
    assert len(fresh.load_images()) == 2 and len(decode_calls) == 4


def test_a_subset_run_keeps_the_full_sets_cache(tmp_path, decode_calls) -> None:
    """A `max_images` try, or another CelebA split, is another set: not a stale entry."""
    write_images(tmp_path / "imgs", 6)
    make = lambda **kw: ImageFolderDataModule(  # noqa: E731
        root=tmp_path / "imgs", cache_dir=tmp_path / "cache", image_size=32, batch_size=2, **kw
    )
    full = make().load_images().clone()
    make(max_images=3).load_images()
    assert len(decode_calls) == 9 and len(list((tmp_path / "cache").glob("*.pt"))) == 2
    cache.clear_memory()  # a new process: both hit on disk
    assert torch.equal(make().load_images(), full)
    assert torch.equal(make(max_images=3).load_images(), full[:3]) and len(decode_calls) == 9
    write_celeba(tmp_path / "celeba", [0, 0, 1])
    for split in ("train", "valid", "train", "valid"):
        CelebADataModule(root=tmp_path / "celeba", split=split, cache_dir=tmp_path / "cache",
                         image_size=32, batch_size=1).load_images()  # fmt: skip
        cache.clear_memory()
    assert len(decode_calls) == 9 + 3  # each split decoded once


def test_disk_cache_is_memory_mapped(tmp_path: Path) -> None:
    """Every rank of a machine maps the same file: one page-cache copy serves them all."""
    write_images(tmp_path / "imgs", 4)
    make = lambda: ImageFolderDataModule(  # noqa: E731
        root=tmp_path / "imgs", cache_dir=tmp_path / "cache", image_size=32, batch_size=2
    )
    decoded = make().load_images()
    (path,) = (tmp_path / "cache").glob("*.pt")
    mapped = Path("/proc/self/maps").read_text()
    assert str(path) in mapped  # the decoding process serves its images from the file too
    cache.clear_memory()
    del decoded
    loaded = make().load_images()
    assert str(path) in Path("/proc/self/maps").read_text() and loaded.shape == (4, 3, 32, 32)


def test_decode_keeps_file_order_around_unreadable_files(tmp_path: Path, caplog) -> None:
    write_images(tmp_path, 5)
    (tmp_path / "001.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "003.jpg").write_bytes(b"")
    files = decode.list_images(tmp_path)
    with caplog.at_level(logging.INFO, logger="dcgan_lightning.data.decode"):
        images, bad = decode.decode_images(files, 32, 3)
    expected = [decode.decode_image(files[i], 32, 3) for i in (0, 2, 4)]
    assert torch.equal(images, torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2))
    assert images.is_contiguous() and bad == [files[1], files[3]]
    progress = [r.getMessage() for r in caplog.records if "Decoded" in r.getMessage()]
    assert progress and progress[-1].startswith("Decoded 5/5 images (100%)")


def test_first_decode_says_where_the_cache_goes(tmp_path: Path, caplog) -> None:
    write_images(tmp_path / "imgs", 2)
    dm = ImageFolderDataModule(root=tmp_path / "imgs", cache_dir=tmp_path / "c", batch_size=1)
    with caplog.at_level(logging.INFO):
        dm.load_images()
    (path,) = (tmp_path / "c").glob("*.pt")
    assert any(str(path) in r.getMessage() and "Decoding 2 images" in r.getMessage()
               for r in caplog.records)  # fmt: skip


# -- CelebA ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kaggle", [False, True])
def test_celeba_partition_and_crop(tmp_path: Path, kaggle: bool) -> None:
    write_celeba(tmp_path / "celeba", [0, 0, 0, 1, 2, 0], kaggle=kaggle)
    counts = {}
    for split in ("train", "valid", "test", "all"):
        dm = CelebADataModule(root=tmp_path / "celeba", split=split, image_size=32, batch_size=1)
        dm.setup("fit")
        counts[split] = len(dm.images)
    assert counts == {"train": 4, "valid": 1, "test": 1, "all": 6}
    red, green, blue = dm.images.float().mean((0, 2, 3))
    assert red < 10  # the red bands lie outside the 178x178 centre crop
    assert abs(green - 255 * 100**2 / 178**2) < 10 and blue > 150
    tight = CelebADataModule(root=tmp_path / "celeba", crop=100, image_size=32, batch_size=1)
    red, green, blue = tight.load_images().float().mean((0, 2, 3))
    assert red < 10 and green > 240 and blue < 15


def test_celeba_plain_folder_of_faces(tmp_path: Path) -> None:
    write_images(tmp_path / "faces" / "a", 3, size=(178, 218))
    dm = CelebADataModule(root=tmp_path / "faces", image_size=64, batch_size=2)
    dm.setup("fit")
    assert dm.images.shape == (3, 3, 64, 64)
    assert batch_of(dm).shape == (2, 3, 64, 64)


def test_celeba_crop_is_for_the_aligned_layout_only(tmp_path: Path) -> None:
    """Other faces (CelebA-HQ, 256x256) take the centre square, not a 178 px zoom on the eyes."""
    face = np.zeros((256, 256, 3), np.uint8)
    face[:, :39] = face[:, -39:] = (255, 0, 0)  # outside the centre 178 columns
    face[:, 39:-39] = (0, 0, 255)
    Image.fromarray(face).save(tmp_path / "hq.png")
    dm = CelebADataModule(root=tmp_path, image_size=32, batch_size=1)  # crop=178 by default
    red, _, blue = dm.load_images().float().mean((0, 2, 3))
    assert abs(red - 255 * 78 / 256) < 10 and blue > 150  # the whole face, border included
    plain = ImageFolderDataModule(root=tmp_path, image_size=32, batch_size=1)
    assert torch.equal(dm.load_images(), plain.load_images())


def test_celeba_missing_says_google_drive_fails_and_how(tmp_path, monkeypatch, no_network):
    import torchvision.datasets.utils as tv_utils

    def quota(*args, **kwargs):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setattr(tv_utils, "download_file_from_google_drive", quota)
    monkeypatch.setattr(download, "kagglehub_installed", lambda: False)
    dm = CelebADataModule(root=tmp_path / "celeba", batch_size=1, kaggle={"handle": "x/celeba"})
    with pytest.raises(MissingDataError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert f"CelebA not found at {tmp_path / 'celeba'}" in message
    assert "Google Drive download failed (Too many users" in message
    assert f"kaggle datasets download x/celeba -p {tmp_path / 'celeba'} --unzip" in message
    assert "data.root=/path/to/faces" in message and no_network == []


# -- downloads ---------------------------------------------------------------------------------
KAGGLE = {"handle": "ikarus777/best-artworks-of-all-time", "competition": False}


def test_missing_kaggle_data_names_path_and_command(tmp_path, monkeypatch, no_network) -> None:
    monkeypatch.setattr(download, "kagglehub_installed", lambda: False)
    root = tmp_path / "best-artworks"
    dm = ImageFolderDataModule(root=root, folder="Pablo_Picasso", kaggle=KAGGLE, batch_size=1)
    with pytest.raises(MissingDataError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert f"not found at {root}" in message and "kagglehub is not installed" in message
    assert f"kaggle datasets download ikarus777/best-artworks-of-all-time -p {root}" in message
    assert "pip install 'dcgan_lightning[kaggle]'" in message and "KAGGLE_KEY" in message
    assert no_network == [] and not root.exists()
    competition = {"handle": "gan-getting-started", "competition": True}
    dm = ImageFolderDataModule(root=root, kaggle=competition, download=False, batch_size=1)
    with pytest.raises(MissingDataError, match="kaggle competitions download -c gan-getting-"):
        dm.prepare_data()
    assert no_network == []


def test_kagglehub_download_is_linked_into_place(tmp_path, monkeypatch, no_network) -> None:
    """With kagglehub and credentials, prepare_data fetches once and the data appears at root."""
    downloaded = tmp_path / "kagglehub-cache" / "images" / "images" / "Pablo_Picasso"
    write_images(downloaded, 3)
    calls = []
    fake = types.SimpleNamespace(
        dataset_download=lambda handle: calls.append(handle) or str(downloaded.parents[2])
    )
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    monkeypatch.setattr(download, "kagglehub_installed", lambda: True)
    monkeypatch.setenv("KAGGLE_USERNAME", "user")
    monkeypatch.setenv("KAGGLE_KEY", "key")
    root = tmp_path / "data" / "best-artworks"
    dm = ImageFolderDataModule(root=root, folder="Pablo_Picasso", kaggle=KAGGLE, image_size=32,
                               batch_size=1)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    assert calls == [KAGGLE["handle"]] and len(dm.images) == 3
    assert (root / "images" / "images" / "Pablo_Picasso" / "000.jpg").is_file()
    again = ImageFolderDataModule(root=root, folder="Pablo_Picasso", kaggle=KAGGLE, batch_size=1)
    again.prepare_data()
    assert calls == [KAGGLE["handle"]]  # present: not fetched again


def test_where_links_fail_the_copy_appears_at_once(tmp_path, monkeypatch) -> None:
    """Ranks waiting for rank 0's download read the data as soon as its folder appears: a copy
    made in place would show them half of it."""
    source = tmp_path / "kagglehub-cache"
    for artist in ("Rembrandt", "Pablo_Picasso"):
        write_images(source / "images" / artist, 2)
    dest = tmp_path / "data" / "best-artworks"

    def no_links(self, target, target_is_directory=False):
        raise OSError("links not allowed here")

    seen_while_copying, real_copytree = [], download.shutil.copytree

    def copy2(src, dst, **kwargs):
        seen_while_copying.append(dest.exists())
        return download.shutil.copy2(src, dst, **kwargs)

    def copytree(src, dst, *args, **kwargs):  # subfolders come back through here, positionally
        if args:
            return real_copytree(src, dst, *args, **kwargs)
        return real_copytree(src, dst, copy_function=copy2, **kwargs)

    monkeypatch.setattr(Path, "symlink_to", no_links)
    monkeypatch.setattr(download.shutil, "copytree", copytree)
    download.link_or_copy(source, dest)
    assert len(seen_while_copying) == 4 and not any(seen_while_copying)
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["Pablo_Picasso", "Rembrandt"]
    assert not dest.is_symlink() and [p.name for p in dest.parent.iterdir()] == ["best-artworks"]


def test_unwritable_cache_dir_trains_uncached(tmp_path: Path, caplog) -> None:
    write_images(tmp_path / "imgs", 2)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should go")
    dm = ImageFolderDataModule(root=tmp_path / "imgs", cache_dir=blocker / "cache", batch_size=1)
    with caplog.at_level(logging.WARNING):
        assert len(dm.load_images()) == 2
    assert any("Cannot write the image cache" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.glob("**/.tmp-*")) == []


# -- too little data per rank ------------------------------------------------------------------
class TensorImages(ImageDataModule):
    """A datamodule over a given tensor: the base class's checks without any files."""

    def __init__(self, images: torch.Tensor, **kwargs) -> None:
        super().__init__(image_size=images.shape[-1], channels=images.shape[1], **kwargs)
        self.given = images

    @property
    def fingerprint(self) -> str:
        return f"tensor-{len(self.given)}"

    def load_images(self) -> torch.Tensor:
        return self.given


def with_trainer(dm: ImageDataModule, world_size: int) -> ImageDataModule:
    """`dm` attached to a stand-in trainer of `world_size` ranks (all the checks read)."""
    dm.trainer = types.SimpleNamespace(
        world_size=world_size,
        distributed_sampler_kwargs={"num_replicas": world_size, "rank": 0},
        training=True,
        strategy=types.SimpleNamespace(root_device=torch.device("cpu")),
    )
    return dm


def test_too_few_images_per_rank_is_a_user_error_before_training() -> None:
    images = torch.zeros(439, 3, 32, 32, dtype=torch.uint8)
    dm = with_trainer(TensorImages(images, batch_size=64), world_size=8)
    with pytest.raises(UserError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert "439 images" in message and "8 ranks" in message and "55 per rank" in message
    assert "data.batch_size=64" in message and "data.batch_size<=55" in message
    assert "at most 6 devices" in message  # ceil(439 / 6) = 74 >= 64, ceil(439 / 7) = 63 < 64
    single = with_trainer(TensorImages(images, batch_size=64), world_size=1)
    single.setup("fit")
    assert len(single.train_dataloader()) == 439 // 64
    six = with_trainer(TensorImages(images, batch_size=64), world_size=6)
    six.setup("fit")  # 74 per rank: one batch each


def test_fewer_images_than_batch_size_is_a_user_error() -> None:
    dm = TensorImages(torch.zeros(43, 3, 32, 32, dtype=torch.uint8), batch_size=128)
    expected = r"43 images, fewer than data.batch_size=128: set data.batch_size<=43"
    with pytest.raises(UserError, match=expected):
        dm.setup("fit")


def test_fewer_validation_images_than_ranks_is_a_user_error() -> None:
    dm = with_trainer(TensorImages(torch.zeros(64, 3, 32, 32, dtype=torch.uint8), batch_size=8), 8)
    dm.setup("fit")
    dm.num_val_images = 8  # one per rank: fine
    with pytest.raises(UserError, match=r"4 validation images across 8 ranks.*metrics.num_samp"):
        dm.num_val_images = 4


def test_the_validation_loader_leaves_the_global_stream_alone(make_cfg) -> None:
    cfg = make_cfg()
    dm = instantiate(cfg.data)
    dm.setup("fit")
    dm.num_val_images = 32
    before = torch.get_rng_state()
    batches = list(dm.val_dataloader())
    assert sum(len(b) for b in batches) == 32
    assert torch.equal(torch.get_rng_state(), before)
