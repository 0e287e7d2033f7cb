"""What the dense benchmarks (NYUv2, CityScapes) share: the networks, the optional noise
task, the splits and the paper's training setup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from dynamtl._helpers import seeded_permutation
from dynamtl.benchmarks.base import Benchmark, Splits, TaskSpec
from dynamtl.data._tabular import hold_out
from dynamtl.data.dense_transforms import DenseAugmentation, TargetKind
from dynamtl.metrics_dense import error_metrics, valid_l1_loss
from dynamtl.models import DENSE_NETWORKS

Network = Literal["split", "mtan"]
NOISE_TASK = "noise"
NOISE_SPEC = TaskSpec(valid_l1_loss, error_metrics()[:1], 1)


class _DenseDataset(Protocol):
    """The constructor the dense data sets share (see :class:`~dynamtl.data.nyuv2.NYUv2Dataset`)."""

    def __call__(
        self,
        root: Path | str,
        split: Literal["train", "val"],
        *,
        indices: Sequence[int] | None = None,
        augmentation: DenseAugmentation | None = None,
        noise_seed: int | None = None,
    ) -> Dataset: ...


class DenseBenchmark(Benchmark):
    """A dense multi-task benchmark: a data set class, the target kinds of its tasks, its
    training augmentation, and the Split or MTAN network of :mod:`dynamtl.models`.

    Subclasses set ``name``, ``description``, ``primary``, ``defaults``, ``task_specs``
    (the real tasks), ``kinds``, ``unit_heads``, ``dataset``, ``scales`` and ``crop``.

    Args:
        network: ``"split"`` (shared encoder, one head per task) or ``"mtan"``.
        width: the ResNet base width (64: the paper's ResNet-50; smaller for quick tests).
        noise: add the ``"noise"`` auxiliary task of Auto-Lambda: regress a per-pixel map
            drawn uniformly from (0, 1], fixed per image by the run's seed, with an L1 loss
            (metric ``abs_error``). Its map moves with the image under augmentation.
        val_size: images of the training folder held out (drawn by the seed) for
            validation and meta batches. 0 (default, the paper's multi-task setup): train
            on all of them, and the validation split is the training images themselves,
            without augmentation. ``limit`` keeps the first ``limit`` training images in
            seeded order.
    """

    task_specs: ClassVar[dict[str, TaskSpec]]
    kinds: ClassVar[dict[str, TargetKind]]
    unit_heads: ClassVar[tuple[str, ...]]
    dataset: ClassVar[_DenseDataset]
    scales: ClassVar[tuple[float, ...]]
    crop: ClassVar[tuple[int, int] | None]

    def __init__(self, network: Network = "split", *, width: int = 64, noise: bool = False, val_size: int = 0) -> None:
        if network not in DENSE_NETWORKS:
            raise ValueError(f"network must be one of {list(DENSE_NETWORKS)}, got {network!r}")
        if width < 1 or val_size < 0:
            raise ValueError(f"width must be >= 1 and val_size >= 0, got width={width}, val_size={val_size}")
        self.network, self.width, self.noise, self.val_size = network, width, noise, val_size
        self.representation = "encoder" if network == "split" else None  # MTAN heads read every stage
        self.specs = {**self.task_specs, **({NOISE_TASK: NOISE_SPEC} if noise else {})}

    def prepare(self, root: Path) -> None:
        """Make the files the data set reads from what ``root`` holds (nothing by default)."""

    def splits(self, root: Path, seed: int, limit: int | None = None) -> Splits:
        self.prepare(Path(root))
        noise_seed = seed if self.noise else None
        full = self.dataset(root, "train")
        if not isinstance(full, Sized):
            raise TypeError(f"{type(self).__name__}.dataset must return a data set with a length")
        size = len(full)
        if self.val_size:
            train, val = hold_out(torch.arange(size), self.val_size, seed, limit)
        else:
            if limit is not None and limit < 1:
                raise ValueError(f"limit caps the number of training samples and must be at least 1, got {limit}")
            train = val = seeded_permutation(size, seed)[:limit]
        augmentation = DenseAugmentation({**self.kinds, NOISE_TASK: "plain"}, scales=self.scales, crop=self.crop)
        return Splits(
            train=self.dataset(root, "train", indices=train.tolist(), augmentation=augmentation, noise_seed=noise_seed),
            val=self.dataset(root, "train", indices=val.tolist(), noise_seed=noise_seed),
            test=self.dataset(root, "val", noise_seed=noise_seed),
        )

    def model(self, heads: Mapping[str, int]) -> nn.Module:
        unit = [task for task in self.unit_heads if task in heads]
        return DENSE_NETWORKS[self.network](heads, unit_heads=unit, width=self.width)
