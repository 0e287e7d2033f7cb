"""NYUv2 read from the MTAN project's pre-processed ``.npy`` files: 13-class segmentation,
depth and surface normals at 288×384."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dynamtl.data.dense_transforms import DenseAugmentation, noise_map
from dynamtl.metrics_dense import IGNORE_INDEX

Split = Literal["train", "val"]

SOURCE = (
    "NYUv2 is read from the pre-processed .npy files of the MTAN project (Liu, Johns & Davison, "
    "CVPR 2019; the archive is linked from that project's README), unpacked so that "
    "{folder}/{{train,val}}/{{image,label,depth,normal}}/<i>.npy exist"
)


class NYUv2Dataset(Dataset):
    """One split of NYUv2 (Silberman et al., ECCV 2012) as pre-processed by the MTAN project:
    795 training and 654 validation images of indoor scenes at 288×384, with 13-class
    semantic labels, depth and surface normals (normals from Eigen & Fergus, ICCV 2015).

    Layout read, under ``root/nyuv2`` (the unpacked archive)::

        train/image/0.npy … 794.npy    float [288, 384, 3], RGB in [0, 1] (pixel / 255)
        train/label/0.npy …            [288, 384], classes 0–12, −1 unlabelled (255 also
                                       read as unlabelled); any numeric dtype
        train/depth/0.npy …            float [288, 384, 1], metres, 0 where unmeasured
        train/normal/0.npy …           float [288, 384, 3], unit normals, channel 0 the
                                       horizontal component (negated by a left-right flip),
                                       all zero where unknown
        val/…                          the same, 654 images (the published test split)

    Files ``0.npy`` … ``n-1.npy`` must exist in all four folders of a split; a missing
    folder or file raises ``FileNotFoundError`` naming it and the layout, a file of another
    shape, dtype or label range raises ``ValueError`` naming the file (checked when a
    sample is read).

    A sample is ``(image float32 [3, 288, 384], {"seg": int64 [288, 384] (−1 unlabelled),
    "depth": float32 [1, 288, 384], "normal": float32 [3, 288, 384]})``, plus ``"noise":
    float32 [1, 288, 384]`` with ``noise_seed`` (:func:`~dynamtl.data.dense_transforms.noise_map`,
    fixed per file), after ``augmentation`` when one is given.

    Args:
        root: the data root; the files live in ``root/nyuv2``.
        split: ``"train"`` or ``"val"`` (the folder read).
        indices: the file numbers to serve, in order (default: all of the split).
        augmentation: applied to every sample read (training).
        noise_seed: add the noise task's target, drawn with this seed.
    """

    FOLDERS: tuple[str, ...] = ("image", "label", "depth", "normal")
    SIZE: tuple[int, int] = (288, 384)
    CHANNELS: ClassVar[dict[str, int | None]] = {"image": 3, "label": None, "depth": 1, "normal": 3}
    NUM_CLASSES = 13
    SPLITS: ClassVar[dict[str, int]] = {"train": 0, "val": 1}

    def __init__(
        self,
        root: Path | str,
        split: Split,
        *,
        indices: Sequence[int] | None = None,
        augmentation: DenseAugmentation | None = None,
        noise_seed: int | None = None,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"NYUv2 has the splits {list(self.SPLITS)}, got {split!r}")
        self.folder = Path(root) / "nyuv2"
        self.split, self.augmentation, self.noise_seed = split, augmentation, noise_seed
        size = self._count()
        self.indices = list(range(size)) if indices is None else list(indices)
        outside = [i for i in self.indices if not 0 <= i < size]
        if outside:
            raise IndexError(f"NYUv2 {split} has files 0..{size - 1}; asked for {outside[:5]}")

    def _count(self) -> int:
        """The number of samples of the split, after checking that every folder holds
        ``0.npy`` … ``n-1.npy``."""
        base = self.folder / self.split
        how = SOURCE.format(folder=self.folder)
        for name in self.FOLDERS:
            if not (base / name).is_dir():
                raise FileNotFoundError(f"the folder {base / name} is missing: {how}")
        size = sum(1 for _ in (base / "image").glob("*.npy"))
        if size == 0:
            raise FileNotFoundError(f"{base / 'image'} holds no .npy file: {how}")
        for name in self.FOLDERS:
            missing = [i for i in range(size) if not (base / name / f"{i}.npy").is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{base / name / f'{missing[0]}.npy'} is missing ({len(missing)} of 0..{size - 1}.npy are): {how}"
                )
        return size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        index = self.indices[i]
        arrays = {name: self._read(name, index) for name in self.FOLDERS}
        image = torch.from_numpy(arrays["image"]).permute(2, 0, 1).float().contiguous()
        targets = {
            "seg": self._labels(arrays["label"], index),
            "depth": torch.from_numpy(arrays["depth"]).permute(2, 0, 1).float().contiguous(),
            "normal": torch.from_numpy(arrays["normal"]).permute(2, 0, 1).float().contiguous(),
        }
        if self.noise_seed is not None:
            targets["noise"] = noise_map(self.noise_seed, self.SPLITS[self.split], index, *self.SIZE)
        if self.augmentation is not None:
            image, targets = self.augmentation(image, targets)
        return image, targets

    def _path(self, name: str, index: int) -> Path:
        return self.folder / self.split / name / f"{index}.npy"

    def _read(self, name: str, index: int) -> np.ndarray:
        """The array of ``name/index.npy``, checked against the layout."""
        path, how = self._path(name, index), SOURCE.format(folder=self.folder)
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} is not a readable .npy file ({error}): {how}") from error
        channels = self.CHANNELS[name]
        expected = self.SIZE if channels is None else (*self.SIZE, channels)
        numeric = np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating)
        floating = np.issubdtype(array.dtype, np.floating)
        if array.shape != expected or not (floating if name != "label" else numeric):
            kind = "a numeric" if name == "label" else "a floating-point"
            raise ValueError(
                f"{path} holds {array.dtype} {list(array.shape)}; the NYUv2 {name} files hold {kind} array "
                f"{list(expected)}: {how}"
            )
        return array

    def _labels(self, array: np.ndarray, index: int) -> Tensor:
        labels = torch.from_numpy(array.astype(np.int64))
        labels[labels == 255] = IGNORE_INDEX
        valid = (labels == IGNORE_INDEX) | ((labels >= 0) & (labels < self.NUM_CLASSES))
        if not bool(valid.all()) or not np.array_equal(array, array.astype(np.int64)):
            raise ValueError(
                f"{self._path('label', index)} holds values other than the classes 0..{self.NUM_CLASSES - 1}, "
                f"-1 and 255 (unlabelled)"
            )
        return labels
