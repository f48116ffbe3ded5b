"""CelebA faces: the aligned images with their train/valid/test partition, or a folder of faces."""

from __future__ import annotations

import logging
from pathlib import Path

from dcgan_lightning.data.download import (
    MissingDataError,
    kaggle_instructions,
    kagglehub_ready,
)
from dcgan_lightning.data.image_folder import ImageFolderDataModule

log = logging.getLogger(__name__)

SPLITS = {"train": 0, "valid": 1, "test": 2}
ALIGNED = "img_align_celeba"
PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")  # torchvision, Kaggle


def read_partition(path: Path) -> dict[str, int]:
    """File name -> split number, from torchvision's `name split` lines or Kaggle's CSV."""
    partition = {}
    for line in path.read_text().splitlines():
        fields = line.replace(",", " ").split()
        if len(fields) == 2 and fields[1].isdigit():  # skips the CSV header
            partition[fields[0]] = int(fields[1])
    return partition


class CelebADataModule(ImageFolderDataModule):
    """`root/img_align_celeba/` (+ `root/list_eval_partition.txt` or `.csv`) as torchvision or
    Kaggle lay it out, restricted to `split`; else every image under `root` (a folder of faces).

    On the aligned layout the centre `crop` x `crop` square (178: the 178x218 faces' centre square,
    as in the DCGAN papers' set-up) is cropped before resizing; a plain folder of faces (e.g.
    CelebA-HQ's 256x256) takes its own centre square whatever `crop` says. Google Drive
    (torchvision's source) often refuses downloads (daily quota), so Kaggle is tried first when
    kagglehub is set up.
    """

    what = "CelebA"

    def __init__(self, root: str | Path, split: str = "train", crop: int | None = 178, **kwargs):
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split must be one of {[*SPLITS, 'all']}, got {split!r}")
        super().__init__(root=root, crop=crop, **kwargs)
        self.split = split

    def how_to_get(self) -> str:
        handle = str(self.kaggle["handle"]) if self.kaggle else "jessicali9530/celeba-dataset"
        return (
            f"Kaggle (most reliable):\n{kaggle_instructions(handle, False, self.root)}\n"
            "torchvision (Google Drive, often fails on its daily quota): pip install gdown, "
            "then rerun with data.download=true\n"
            "or any folder of face images: data.root=/path/to/faces"
        )

    def fetch(self) -> None:
        if self.kaggle and kagglehub_ready():
            super().fetch()
            return
        try:
            self._fetch_google_drive()
        except Exception as error:
            raise MissingDataError(
                self.what,
                self.root,
                f"torchvision's Google Drive download failed ({error}).\n{self.how_to_get()}",
            ) from error

    def _fetch_google_drive(self) -> None:
        from torchvision.datasets import CelebA
        from torchvision.datasets.utils import download_file_from_google_drive, extract_archive

        wanted = (f"{ALIGNED}.zip", PARTITION_FILES[0])
        for file_id, md5, name in CelebA.file_list:
            if name in wanted:
                download_file_from_google_drive(file_id, self.root, name, md5)
        extract_archive(str(self.root / wanted[0]), str(self.root))

    def image_dir(self) -> Path:
        aligned = self.root / ALIGNED
        return aligned if aligned.is_dir() else super().image_dir()

    def crop_for(self, image_dir: Path) -> int | None:
        return self.crop if image_dir.name == ALIGNED else None

    def image_files(self, image_dir: Path) -> list[Path]:
        files = super().image_files(image_dir)
        if image_dir.name != ALIGNED or self.split == "all":
            return files
        found = [self.root / name for name in PARTITION_FILES if (self.root / name).is_file()]
        if not found:
            log.warning("No %s in %s: using every image, not the %s split",
                        " or ".join(PARTITION_FILES), self.root, self.split)  # fmt: skip
            return files
        partition, wanted = read_partition(found[0]), SPLITS[self.split]
        return [f for f in files if partition.get(f.name) == wanted]
