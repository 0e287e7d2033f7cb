"""Miniature data sets written in the published layouts of the paper-scale benchmarks:
NYUv2 (MTAN's .npy files), the CityScapes release folders, the CIFAR-100 python pickles.
Shared by the data tests and the command-line tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from dynamtl.benchmarks.cifar100 import SUPERCLASSES

H, W = 288, 384


def write_nyuv2(root: Path, split: str, n: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """``n`` samples of ``root/nyuv2/<split>/{image,label,depth,normal}/<i>.npy`` with MTAN's
    shapes and conventions: float64 images in [0, 1], float labels 0–12 with −1 (and one
    255) unlabelled, depth in metres with 0 unmeasured, unit normals with 0 unknown."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[np.ndarray]] = {name: [] for name in ("image", "label", "depth", "normal")}
    for name in written:
        (root / "nyuv2" / split / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = rng.integers(-1, 13, (H, W)).astype(np.float64)
        label[0, 0] = 255
        depth = (rng.random((H, W, 1)) * 10).astype(np.float32)
        depth[:8] = 0
        normal = rng.normal(size=(H, W, 3))
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        normal[:8] = 0
        arrays = {"image": rng.random((H, W, 3)), "label": label, "depth": depth, "normal": normal}
        for name, array in arrays.items():
            np.save(root / "nyuv2" / split / name / f"{i}.npy", array)
            written[name].append(array)
    return written


BLOCK = 256  # the release's 2048x1024 frames are 4 x 8 blocks of 256x256 pixels
LABEL_IDS = [7, 8, 26, 0, 33, 24, 11, 21]  # per block column; trainIds 0, 1, 13, void, 18, 11, 2, 8
TRAIN_IDS = [0, 1, 13, 255, 18, 11, 2, 8]
PART_UIDS = [7, 0, 24, 26001, 2401001, 2500204, 2600105, 2800302, 2400100, 26, 11, 4, 2700001]
PART_CLASSES = [0, 255, 255, 255, 1, 4, 9, 6, 255, 255, 0, 255, 5]
DISPARITY_PNG = [0, 257, 25601, 1025]  # per block row: 0 (none), 1, 100, 4 pixels at 2048 wide
RED, GREEN = [10, 200, 90], [30, 60]


def _blocks(values: list[int], dtype: type, by_row: bool = False) -> np.ndarray:
    """A 1024x2048 plane constant on every 256x256 block: ``values`` cycled over the 32
    blocks in row-major order, or one value per block row."""
    grid = np.array([[values[r if by_row else (r * 8 + c) % len(values)] for c in range(8)] for r in range(4)])
    return np.kron(grid, np.ones((BLOCK, BLOCK), dtype=np.int64)).astype(dtype)


def write_cityscapes_release(root: Path, frames: dict[str, list[str]]) -> None:
    """Frames ``{split: ["<city>_<seq>_<frame>", ...]}`` in the official folders and names."""
    colours = np.stack([_blocks(RED, np.uint8), _blocks(GREEN, np.uint8), _blocks([250], np.uint8)], -1)
    for split, stems in frames.items():
        for stem in stems:
            city = stem.split("_")[0]
            files = {
                ("leftImg8bit", "_leftImg8bit.png"): colours,
                ("gtFine", "_gtFine_labelIds.png"): _blocks([LABEL_IDS[c] for c in range(8)], np.uint8),
                ("disparity", "_disparity.png"): _blocks(DISPARITY_PNG, np.uint16, by_row=True),
                ("gtFinePanopticParts", "_gtFinePanopticParts.tif"): _blocks(PART_UIDS, np.int32),
            }
            for (top, suffix), array in files.items():
                folder = root / "cityscapes" / top / split / city
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / f"{stem}{suffix}")


def pixels(k: int) -> np.ndarray:
    """Row k of a miniature ``data`` array: channel c, row y, column x holds (k + 3c + y + 2x) % 256."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((k + 3 * c + y + 2 * x) % 256).astype(np.uint8).reshape(3072)


def write_cifar100(root: Path, per_fine: dict[str, int] | None = None, coarse_of=lambda f: f % 20) -> Path:
    """The three pickles of ``root/cifar-100-python`` (protocol 2, bytes keys, as published)
    with ``per_fine[split]`` images of each fine class; fine class f in superclass f % 20."""
    per_fine = per_fine or {"train": 2, "test": 1}
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in per_fine.items():
        fine = np.repeat(np.arange(100), count)
        content = {
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": [coarse_of(int(f)) for f in fine],
            b"filenames": [f"image_{k}.png".encode() for k in range(len(fine))],
            b"data": np.stack([pixels(k) for k in range(len(fine))]),
        }
        (folder / split).write_bytes(pickle.dumps(content, protocol=2))
    meta = {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [name.encode() for name in SUPERCLASSES],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder
