"""CityScapes at 256×512: 19-class semantic segmentation, 10-class part segmentation of
humans and vehicles, and disparity; prepared once from the official release folders into
memory-mapped ``.npy`` arrays."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dynamtl.data._progress import progress
from dynamtl.data.dense_transforms import DenseAugmentation, nearest_indices, noise_map
from dynamtl.metrics_dense import IGNORE_INDEX

Split = Literal["train", "val"]

SIZE = (256, 512)
STORED_IGNORE = 255
# Cityscapes label id (0–33, cityscapesScripts' labels.py) -> the 19 training ids; 255: void.
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
             24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
NUM_LABEL_IDS = 34
HUMANS, VEHICLES = (24, 25), (26, 27, 28)  # person, rider; car, truck, bus
HUMAN_PARTS, VEHICLE_PARTS = 4, 5  # torso, head, arm, leg; window, wheel, light, license plate, chassis
RELEASE = {
    "image": ("leftImg8bit", "_leftImg8bit.png"),
    "label": ("gtFine", "_gtFine_labelIds.png"),
    "disparity": ("disparity", "_disparity.png"),
    "parts": ("gtFinePanopticParts", "_gtFinePanopticParts.tif"),
}
ARRAYS: dict[str, tuple[type, tuple[int, ...]]] = {  # name -> (dtype, shape of one frame)
    "image": (np.uint8, (*SIZE, 3)),
    "seg": (np.uint8, SIZE),
    "part_seg": (np.uint8, SIZE),
    "disparity": (np.float32, SIZE),
}
FRAMES = "frames.txt"
SOURCE = (
    "CityScapes (Cordts et al., CVPR 2016) comes from the Cityscapes website (registration "
    "required): unpack leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip and "
    "disparity_trainvaltest.zip, and the part labels of Cityscapes-Panoptic-Parts (Meletis et al. "
    "2020, gtFinePanopticParts), so that {folder}/{{leftImg8bit,gtFine,disparity,gtFinePanopticParts}}"
    "/{{train,val}}/<city>/ exist"
)


def prepare_cityscapes(root: Path | str, splits: Sequence[Split] = ("train", "val")) -> Path:
    """Convert the official CityScapes release under ``root/cityscapes`` into the arrays
    :class:`CityScapesDataset` reads, ``root/cityscapes/prepared/<split>/`` (see there), and
    return that folder. Takes several minutes for the 3,475 training and validation frames
    (a progress bar shows with tqdm installed) and writes about 3.5 GB; each split's folder
    appears only once complete (written beside it first), replacing an earlier one.

    Per frame ``<city>_<seq>_<frame>`` of ``<split>/<city>/`` (files from :data:`RELEASE`):

    * image: ``leftImg8bit`` PNG resized to 256×512 with Pillow's antialiased bilinear filter;
    * seg: ``gtFine`` ``*_labelIds.png`` mapped to the 19 training ids of cityscapesScripts
      (:data:`TRAIN_IDS`, every other id void: 255);
    * part_seg: ``gtFinePanopticParts`` ``*.tif`` universal ids (semantic id, instance id,
      part id packed as ``sid·10⁵ + iid·10² + pid`` for part-labelled pixels, ``sid·10³ + iid``
      or ``sid`` otherwise) mapped to 10 classes, the grouping of the Cityscapes-Panoptic-Parts
      authors' 10-class part evaluation: 0 background (every non-void pixel outside the part
      classes), 1–4 torso, head, arm, leg of person and rider, 5–9 window, wheel, light,
      license plate, chassis of car, truck and bus; void (255): Cityscapes void classes, and
      pixels of those five classes without a part label (part id 0 or none);
    * disparity: ``disparity`` 16-bit PNG p → (p − 1) / 256 pixels where p > 0, 0 (no
      measurement) where p = 0, then scaled by 512 / the source width (1/4) so that it is a
      disparity in pixels of the stored 512-wide image.

    Labels, parts and disparity are resized by nearest neighbour
    (:func:`~dynamtl.data.dense_transforms.nearest_indices`): no label or invalid zero is
    blended. ``FileNotFoundError`` names a missing folder or file and where the data come
    from; ``ValueError`` a file of another size or with label ids above 33. Needs Pillow.
    """
    folder = Path(root) / "cityscapes"
    Image = _pillow()
    out = folder / "prepared"
    for split in splits:
        if split not in CityScapesDataset.SPLITS:
            raise ValueError(f"CityScapes is prepared for the splits {list(CityScapesDataset.SPLITS)}, got {split!r}")
        frames = _release_frames(folder, split)
        partial = out / f"{split}.part"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        arrays = {
            name: np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=dtype, shape=(len(frames), *tail))
            for name, (dtype, tail) in ARRAYS.items()
        }
        for n, (city, stem) in enumerate(progress(frames, len(frames), f"preparing CityScapes {split}", unit="frame")):
            paths = {kind: folder / top / split / city / f"{stem}{suffix}" for kind, (top, suffix) in RELEASE.items()}
            for path in paths.values():
                if not path.is_file():
                    raise FileNotFoundError(f"{path} is missing: {SOURCE.format(folder=folder)}")
            with Image.open(paths["image"]) as image:
                width, height = image.size
                arrays["image"][n] = np.asarray(image.convert("RGB").resize(SIZE[::-1], Image.Resampling.BILINEAR))
            rows, cols = nearest_indices(height, SIZE[0]).numpy(), nearest_indices(width, SIZE[1]).numpy()
            sampled = {
                kind: _read_plane(paths[kind], (height, width))[rows[:, None], cols[None, :]]
                for kind in ("label", "disparity", "parts")
            }
            arrays["seg"][n] = _train_ids(sampled["label"], paths["label"])
            arrays["part_seg"][n] = _part_classes(sampled["parts"])
            raw = sampled["disparity"].astype(np.float32)
            arrays["disparity"][n] = np.where(raw > 0, (raw - 1.0) / 256.0, 0.0) * (SIZE[1] / width)
        for array in arrays.values():
            array.flush()
        del arrays
        (partial / FRAMES).write_text("".join(f"{city}/{stem}\n" for city, stem in frames))
        final = out / split
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    return out


def _release_frames(folder: Path, split: str) -> list[tuple[str, str]]:
    """``(city, stem)`` of every ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png``, sorted."""
    images = folder / RELEASE["image"][0] / split
    for top, _ in RELEASE.values():
        if not (folder / top / split).is_dir():
            raise FileNotFoundError(f"the folder {folder / top / split} is missing: {SOURCE.format(folder=folder)}")
    suffix = RELEASE["image"][1]
    frames = sorted((p.parent.name, p.name[: -len(suffix)]) for p in images.glob(f"*/*{suffix}"))
    if not frames:
        raise FileNotFoundError(f"{images} holds no <city>/<frame>{suffix}: {SOURCE.format(folder=folder)}")
    return frames


def _pillow() -> Any:
    """``PIL.Image``, or an ``ImportError`` saying how to install it."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("preparing CityScapes reads PNG and TIFF files with Pillow: pip install pillow") from error
    return Image


def _read_plane(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The single-channel integer image ``path`` as an int64 array, checked to be ``shape``."""
    with _pillow().open(path) as image:
        plane = np.asarray(image).astype(np.int64)
    if plane.shape != shape:
        raise ValueError(
            f"{path} is {list(plane.shape)}, its frame's image is {list(shape)}: replace it with the released file"
        )
    return plane


def _train_ids(label_ids: np.ndarray, path: Path) -> np.ndarray:
    """Cityscapes label ids -> the 19 training ids, void 255."""
    if label_ids.min() < 0 or label_ids.max() >= NUM_LABEL_IDS:
        raise ValueError(f"{path} holds label ids outside 0..{NUM_LABEL_IDS - 1}: replace it with the released file")
    return _TRAIN_ID_TABLE[label_ids]


def _part_classes(uids: np.ndarray) -> np.ndarray:
    """Cityscapes-Panoptic-Parts universal ids -> the 10 part classes, void 255."""
    has_part = uids >= 100_000
    sid = np.where(has_part, uids // 100_000, np.where(uids >= 1_000, uids // 1_000, uids))
    pid = np.where(has_part, uids % 100, 0)
    out = np.where(_TRAIN_ID_TABLE[np.clip(sid, 0, NUM_LABEL_IDS - 1)] == STORED_IGNORE, STORED_IGNORE, 0)
    out = np.where((sid >= NUM_LABEL_IDS) | (uids < 0), STORED_IGNORE, out)
    humans, vehicles = np.isin(sid, HUMANS), np.isin(sid, VEHICLES)
    out = np.where(humans | vehicles, STORED_IGNORE, out)
    out = np.where(humans & (pid >= 1) & (pid <= HUMAN_PARTS), pid, out)
    out = np.where(vehicles & (pid >= 1) & (pid <= VEHICLE_PARTS), HUMAN_PARTS + pid, out)
    return out.astype(np.uint8)


_TRAIN_ID_TABLE = np.array([TRAIN_IDS.get(i, STORED_IGNORE) for i in range(NUM_LABEL_IDS)], dtype=np.uint8)


class CityScapesDataset(Dataset):
    """One split of CityScapes (Cordts et al., CVPR 2016) at 256×512, read from the arrays
    that :func:`prepare_cityscapes` writes from the official release.

    Release read by :func:`prepare_cityscapes`, under ``root/cityscapes``::

        leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
        disparity/{train,val}/<city>/<city>_<seq>_<frame>_disparity.png
        gtFinePanopticParts/{train,val}/<city>/<city>_<seq>_<frame>_gtFinePanopticParts.tif

    (the first three from the Cityscapes website; the part labels from the
    Cityscapes-Panoptic-Parts release, Meletis et al. 2020, which labels the parts of
    person, rider, car, truck and bus on the gtFine frames of train and val). Arrays read,
    under ``root/cityscapes/prepared/<split>/`` (N frames, in the order of ``frames.txt``,
    one ``<city>/<stem>`` per line)::

        image.npy       uint8 [N, 256, 512, 3]  RGB
        seg.npy         uint8 [N, 256, 512]     19 training ids, 255 void
        part_seg.npy    uint8 [N, 256, 512]     10 part classes (see prepare_cityscapes), 255 void
        disparity.npy   float32 [N, 256, 512]   pixels of the 512-wide image, 0 unmeasured

    The part classes are *our* definition, stated in :func:`prepare_cityscapes`: the
    grouping of the Panoptic-Parts authors' 10-class part evaluation; the Auto-Lambda paper
    names the task but not its label file.

    A sample is ``(image float32 [3, 256, 512] in [0, 1], {"seg": int64 [256, 512],
    "part_seg": int64 [256, 512] (−1 void), "disparity": float32 [1, 256, 512]})``, plus
    ``"noise": float32 [1, 256, 512]`` with ``noise_seed``, after ``augmentation`` when one
    is given. The arrays are memory-mapped (opened again in each ``DataLoader`` worker).
    Missing arrays raise ``FileNotFoundError`` naming the file and the preparation; arrays
    of another shape or dtype raise ``ValueError``.

    Args:
        root: the data root; the arrays live in ``root/cityscapes/prepared``.
        split: ``"train"`` or ``"val"``.
        indices: the frames to serve, in order (default: all).
        augmentation: applied to every sample read (training).
        noise_seed: add the noise task's target, drawn with this seed.
    """

    SPLITS: ClassVar[dict[str, int]] = {"train": 0, "val": 1}
    NUM_CLASSES = len(TRAIN_IDS)
    NUM_PARTS = 1 + HUMAN_PARTS + VEHICLE_PARTS

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
            raise ValueError(f"CityScapes has the splits {list(self.SPLITS)}, got {split!r}")
        self.release = Path(root) / "cityscapes"
        self.folder = self.release / "prepared" / split
        self.split, self.augmentation, self.noise_seed = split, augmentation, noise_seed
        size = len(self._open()["image"])
        self.indices = list(range(size)) if indices is None else list(indices)
        outside = [i for i in self.indices if not 0 <= i < size]
        if outside:
            raise IndexError(f"CityScapes {split} has frames 0..{size - 1}; asked for {outside[:5]}")

    @staticmethod
    def is_prepared(root: Path | str, split: Split) -> bool:
        """Whether the arrays of ``split`` exist (they are written all at once)."""
        return (Path(root) / "cityscapes" / "prepared" / split / FRAMES).is_file()

    def _open(self) -> dict[str, np.ndarray]:
        """The memory-mapped arrays, opened on first use in this process and checked."""
        opened: dict[str, np.ndarray] | None = getattr(self, "_arrays", None)
        if opened is not None:
            return opened
        how = (
            "prepare the arrays from the official release with dynamtl.data.cityscapes.prepare_cityscapes(root); "
            + SOURCE.format(folder=self.release)
        )
        arrays = {}
        for name, (dtype, tail) in ARRAYS.items():
            path = self.folder / f"{name}.npy"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: {how}")
            try:
                arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise ValueError(f"{path} is not a readable .npy file ({error}): {how}") from error
            if arrays[name].dtype != dtype or arrays[name].shape[1:] != tail:
                raise ValueError(
                    f"{path} holds {arrays[name].dtype} {list(arrays[name].shape)}, expected {np.dtype(dtype)} "
                    f"[N, {', '.join(map(str, tail))}]: {how}"
                )
        counts = {name: len(a) for name, a in arrays.items()}
        if len(set(counts.values())) != 1 or 0 in counts.values():
            raise ValueError(f"the arrays in {self.folder} hold different or no numbers of frames {counts}: {how}")
        self._arrays = arrays
        return arrays

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_arrays", None)  # memory maps are reopened, not copied, in a worker
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        index = self.indices[i]
        arrays = self._open()
        image = torch.from_numpy(np.array(arrays["image"][index])).permute(2, 0, 1).float().div_(255.0)
        targets = {name: _labels(arrays[name][index]) for name in ("seg", "part_seg")}
        targets["disparity"] = torch.from_numpy(np.array(arrays["disparity"][index]))[None]
        if self.noise_seed is not None:
            targets["noise"] = noise_map(self.noise_seed, self.SPLITS[self.split], index, *SIZE)
        if self.augmentation is not None:
            image, targets = self.augmentation(image, targets)
        return image, targets


def _labels(stored: np.ndarray) -> Tensor:
    labels = torch.from_numpy(stored.astype(np.int64))
    labels[labels == STORED_IGNORE] = IGNORE_INDEX
    return labels
