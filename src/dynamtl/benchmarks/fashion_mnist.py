"""Fashion-MNIST: the 10-class article label with a coarse 4-group label as auxiliary task."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamtl._helpers import seeded_permutation
from dynamtl.benchmarks.base import Benchmark, MultiTaskTensors, Splits, TaskSpec, TrainingDefaults
from dynamtl.data.fashion_mnist import FashionMNIST as FashionMNISTFiles
from dynamtl.metrics import ACCURACY

GROUP_NAMES = ("tops", "bottoms and dresses", "footwear", "bags")
GROUP_OF_CLASS = (0, 1, 0, 1, 0, 2, 0, 2, 3, 2)
"""Class -> group: T-shirt/top, Pullover, Coat, Shirt -> tops (0); Trouser, Dress ->
bottoms and dresses (1); Sandal, Sneaker, Ankle boot -> footwear (2); Bag -> bags (3)."""


class FashionMNIST(Benchmark):
    """Fashion-MNIST articles with two tasks: the 10-class label and a coarse 4-group label.

    **Data.** Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT licence), read from
    ``root/fashion-mnist`` by :class:`~dynamtl.data.fashion_mnist.FashionMNIST` (filled from
    the Debian package ``dataset-fashion-mnist`` when absent). A seeded permutation of the
    60,000 training images puts its first ``val_size`` in the validation split and the rest
    in the training split (``limit`` keeps the first ``limit`` of those); the test split is
    the 10,000 published test images, the same for every seed.

    **Tasks.** ``"label"``: the article class 0–9, 10-way cross-entropy, accuracy; the
    primary task of auxiliary learning. ``"group"``: the coarse group of the class
    (:data:`GROUP_OF_CLASS`): *tops* (T-shirt/top, pullover, coat, shirt), *bottoms and
    dresses* (trouser, dress), *footwear* (sandal, sneaker, ankle boot), *bags* (bag);
    4-way cross-entropy, accuracy. The grouping follows what the articles are worn as, so
    the group is a deterministic function of the label that shares its visual features (a
    useful auxiliary task, not an informative one: it never tells more than the label);
    it does not separate the classes that are hardest to tell apart (shirt, T-shirt,
    pullover, coat, all tops). Add ``noise_task = true`` to a run for a pure-noise
    auxiliary task (:class:`~dynamtl.benchmarks.noise.WithNoiseTask`).

    **Inputs** ``float32 [N, 1, 28, 28]`` in [0, 1] (pixel / 255).

    **Model** (:meth:`model`): a trunk ``conv 3×3 (16, padding 1) → ReLU → max-pool 2 →
    conv 3×3 (32, padding 1) → ReLU → max-pool 2 → linear 1568→64 → ReLU`` and one linear
    head 64→width per task. **Defaults**: Adam, learning rate 1e-3, batch 128, 10 epochs.

    Args:
        val_size: validation images taken from the 60,000 training images (1 to 59,999).
    """

    name = "fashion-mnist"
    description = "Fashion-MNIST articles (Xiao et al. 2017): the 10-class label and a coarse 4-group label"
    specs = {  # noqa: RUF012 - Benchmark.specs is per instance (wrappers set their own); never mutated
        "label": TaskSpec(F.cross_entropy, (ACCURACY,), 10),
        "group": TaskSpec(F.cross_entropy, (ACCURACY,), len(GROUP_NAMES)),
    }
    primary = ("label",)
    defaults = TrainingDefaults(epochs=10, batch_size=128, lr=1e-3, optimizer="adam")
    representation = "trunk"

    def __init__(self, *, val_size: int = 10_000) -> None:
        if not 1 <= val_size < FashionMNISTFiles.SIZES["train"]:
            raise ValueError(f"val_size must lie in [1, {FashionMNISTFiles.SIZES['train']}), got {val_size}")
        self.val_size = val_size

    def splits(self, root: Path, seed: int, limit: int | None = None) -> Splits:
        if limit is not None and limit < 1:
            raise ValueError(f"limit caps the number of training samples and must be >= 1, got {limit}")
        files = FashionMNISTFiles(root)
        images, labels = files.load("train")
        order = seeded_permutation(len(images), seed)
        val, train = order[: self.val_size], order[self.val_size :][:limit]
        return Splits(
            train=dataset(images[train], labels[train]),
            val=dataset(images[val], labels[val]),
            test=dataset(*files.load("test")),
        )

    def model(self, heads: Mapping[str, int]) -> nn.Module:
        return _SmallCNN(heads)


def dataset(images: Tensor, labels: Tensor) -> MultiTaskTensors:
    """The two tasks' samples of ``uint8 [N, 28, 28]`` images and ``int64 [N]`` labels."""
    groups = torch.tensor(GROUP_OF_CLASS)[labels]
    return MultiTaskTensors(images.unsqueeze(1).float().div_(255.0), {"label": labels, "group": groups})


class _SmallCNN(nn.Module):
    """The convolutional trunk of :class:`FashionMNIST` and one linear head per task."""

    def __init__(self, heads: Mapping[str, int]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("FashionMNIST.model needs at least one head: model({'label': 10, 'group': 4})")
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({task: nn.Linear(64, width) for task, width in heads.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {task: head(h) for task, head in self.heads.items()}
