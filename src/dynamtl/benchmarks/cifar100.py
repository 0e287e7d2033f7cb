"""Multi-domain CIFAR-100: twenty 5-way classification tasks, one per superclass."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from dynamtl._helpers import seeded_permutation
from dynamtl.benchmarks.base import Benchmark, Splits, TaskSpec, auto_lambda_training
from dynamtl.data._tabular import hold_out
from dynamtl.data.cifar100 import CIFAR100
from dynamtl.metrics import ACCURACY
from dynamtl.models import MultiDomainVGG16
from dynamtl.tasks import Tasks

# The 20 superclasses in the order of their coarse labels 0–19 (the published meta file).
SUPERCLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)  # fmt: skip
MEAN = (0.5071, 0.4865, 0.4409)  # per-channel mean and standard deviation of the CIFAR-100
STD = (0.2673, 0.2564, 0.2762)  # training images, pixel / 255
PADDING = 4


def random_crop_flip(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Per image of ``images`` ``[N, C, H, W]``: pad ``padding`` zeros on every side, take a
    random H×W window (offsets uniform in 0..2·padding, independent per image), then mirror
    it left-right with probability ½."""
    n, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :]
    crops = padded[torch.arange(n)[:, None, None, None], torch.arange(channels)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


class CIFAR100MultiDomain(Benchmark):
    """CIFAR-100 as 20 domains, the multi-domain benchmark of Auto-Lambda: each superclass is
    a task that classifies its own images among its five fine classes.

    **Data**: :class:`~dynamtl.data.cifar100.CIFAR100`, read from the published pickles
    ``root/cifar-100-python/{train,test,meta}`` (layout and errors there); the meta file's
    superclass names must be :data:`SUPERCLASSES`. Domain c holds the images of coarse label
    c, labelled 0–4 by the rank of their fine label among the five fine labels of c (in
    increasing order): 2,500 training and 500 test images per domain. Splits: training =
    the training file (less ``val_size`` images per domain held out by the seed; with
    ``limit``, the first ``limit // 20`` (at least 1) per domain in seeded order),
    validation = the held-out images or, without ``val_size``, the training images
    un-augmented, test = the test file. Every domain of a split has as many images.

    **Batches** (:meth:`loader`): one batch per domain per step, ``{superclass: (x, y)}``
    with ``x`` ``float32 [B, 3, 32, 32]`` normalised by :data:`MEAN` and :data:`STD` and
    ``y`` ``int64 [B]``; an epoch runs ⌈n / B⌉ steps over the n images of each domain.
    :meth:`tasks` are multi-input (``model(x, task)``). Training augmentation: a random
    32×32 crop of the image padded by 4 zeros and a horizontal flip with probability ½
    (:func:`random_crop_flip`), drawn from the loader's generator.

    **Tasks**: the 20 superclass names, 5-way cross-entropy, metric accuracy. ``primary``
    for auxiliary learning: four of the hardest domains (people, aquatic_mammals,
    small_mammals, reptiles), our reading of the four primary domains of Auto-Lambda's
    auxiliary-learning experiment; the other 16 help. Pass another primary set as needed.

    **Model** (``network="vgg"``, the only one): :class:`~dynamtl.models.MultiDomainVGG16`,
    VGG-16 with per-domain batch norms and classifiers, of base width ``width``. **Defaults** (the paper's): SGD,
    learning rate 0.1, momentum 0.9, weight decay 5e-4, cosine annealing over 200 epochs,
    32 images per domain, cosine schedule; Auto-Lambda's λ learning rate 3e-4.

    Args:
        network: ``"vgg"``.
        width: the VGG's base width (64: the paper's VGG-16; every layer's channels scale
            by ``width / 64``; smaller for quick tests).
        val_size: images per domain held out from training for validation (0: none).
    """

    name = "cifar100"
    description = "CIFAR-100 as 20 domains (one per superclass), each a 5-way classification; multi-domain VGG-16"
    specs = {domain: TaskSpec(F.cross_entropy, (ACCURACY,), CIFAR100.PER_COARSE) for domain in SUPERCLASSES}  # noqa: RUF012 - Benchmark.specs is per instance (wrappers set their own); never mutated
    primary = ("people", "aquatic_mammals", "small_mammals", "reptiles")
    defaults = auto_lambda_training(batch_size=32, weight_decay=5e-4, auto_lambda_lr=3e-4)

    def __init__(self, network: Literal["vgg"] = "vgg", *, width: int = 64, val_size: int = 0) -> None:
        if network != "vgg":
            raise ValueError(f"network must be one of ['vgg'] for CIFAR-100, got {network!r}")
        if width < 1 or val_size < 0:
            raise ValueError(f"width must be >= 1 and val_size >= 0, got width={width}, val_size={val_size}")
        self.network, self.width, self.val_size = network, width, val_size

    def splits(self, root: Path, seed: int, limit: int | None = None) -> Splits:
        if limit is not None and limit < 1:
            raise ValueError(f"limit caps the number of training samples and must be at least 1, got {limit}")
        data = CIFAR100(root)
        coarse_names = data.names()[1]
        if tuple(coarse_names) != SUPERCLASSES:
            raise ValueError(
                f"{data.folder / 'meta'} names the superclasses {coarse_names}; the published file names "
                f"{list(SUPERCLASSES)}"
            )
        images, fine, coarse = data.load("train")
        rank = torch.zeros(CIFAR100.NUM_FINE, dtype=torch.int64)
        for members in data.superclasses(fine, coarse):
            rank[members] = torch.arange(len(members))
        per_domain = None if limit is None else max(1, limit // len(SUPERCLASSES))
        train: dict[str, Tensor] = {}
        val: dict[str, Tensor] = {}
        for c, domain in enumerate(SUPERCLASSES):
            in_domain = torch.nonzero(coarse == c).flatten()
            if self.val_size:
                train[domain], val[domain] = hold_out(in_domain, self.val_size, seed + c, per_domain)
            else:
                train[domain] = val[domain] = in_domain[seeded_permutation(len(in_domain), seed + c)][:per_domain]
        test_images, test_fine, test_coarse = data.load("test")
        test = {domain: torch.nonzero(test_coarse == c).flatten() for c, domain in enumerate(SUPERCLASSES)}
        return Splits(
            train=_Domains(images, rank[fine], train, augment=True),
            val=_Domains(images, rank[fine], val, augment=False),
            test=_Domains(test_images, rank[test_fine], test, augment=False),
        )

    def model(self, heads: Mapping[str, int]) -> nn.Module:
        return MultiDomainVGG16(heads, width=self.width)

    def loader(self, dataset: Dataset, batch_size: int, shuffle: bool, generator: torch.Generator) -> _DomainBatches:
        if not isinstance(dataset, _Domains):
            raise TypeError(
                f"CIFAR100MultiDomain.loader takes the data sets of its splits, got {type(dataset).__name__}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return _DomainBatches(dataset, batch_size, shuffle, generator)

    def tasks(self, names: Sequence[str] | None = None) -> Tasks:
        return Tasks(super().tasks(names).losses, multi_input=True)


class _Domains(Dataset):
    """The images of every domain: ``members[domain]`` indexes ``images`` and ``labels``;
    every domain has as many members."""

    def __init__(self, images: Tensor, labels: Tensor, members: Mapping[str, Tensor], *, augment: bool) -> None:
        sizes = {domain: len(index) for domain, index in members.items()}
        if len(set(sizes.values())) != 1 or 0 in sizes.values():
            raise ValueError(f"every CIFAR-100 domain must hold the same, non-zero number of images, got {sizes}")
        self.images, self.labels, self.members, self.augment = images, labels, dict(members), augment
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(STD).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(next(iter(self.members.values())))

    def __getitem__(self, i: int) -> dict[str, tuple[Tensor, Tensor]]:
        batch = self.batch(torch.tensor([i]))
        return {domain: (x[0], y[0]) for domain, (x, y) in batch.items()}

    def batch(self, positions: Tensor, generator: torch.Generator | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """``{domain: (x, y)}`` of the images at ``positions`` of every domain (augmented when
        this is a training split)."""
        out = {}
        for domain, index in self.members.items():
            chosen = index[positions]
            x = self.images[chosen].float().div_(255.0)
            if self.augment:
                x = random_crop_flip(x, PADDING, generator)
            out[domain] = ((x - self.mean) / self.std, self.labels[chosen])
        return out


class _DomainBatches:
    """An epoch of ⌈n / B⌉ steps, each the next B positions of every domain's image list
    (in a fresh random order of the positions every epoch when shuffling)."""

    def __init__(self, dataset: _Domains, batch_size: int, shuffle: bool, generator: torch.Generator) -> None:
        self.dataset, self.batch_size, self.shuffle, self.generator = dataset, batch_size, shuffle, generator

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            yield self.dataset.batch(order[start : start + self.batch_size], self.generator)
