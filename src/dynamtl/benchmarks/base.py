"""What a benchmark is: data splits, tasks with losses and metrics, and a model builder."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dynamtl.metrics import Metric
from dynamtl.tasks import LossFn, Tasks, task_indices


class MultiTaskTensors(Dataset):
    """Samples ``(inputs[i], {task: targets[task][i]})`` from tensors held in memory."""

    def __init__(self, inputs: Tensor, targets: Mapping[str, Tensor]) -> None:
        for task, t in targets.items():
            if len(t) != len(inputs):
                raise ValueError(f"task {task!r} has {len(t)} targets for {len(inputs)} inputs")
        self.inputs, self.targets = inputs, dict(targets)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.inputs[i], {task: t[i] for task, t in self.targets.items()}


@dataclass
class Splits:
    """Training, validation (model selection, meta batches) and test data: in-memory
    :class:`MultiTaskTensors`, or any dataset whose samples the benchmark's
    :meth:`Benchmark.loader` turns into batches."""

    train: Dataset
    val: Dataset
    test: Dataset


@dataclass(frozen=True)
class TaskSpec:
    """One task of a benchmark: its loss, its metrics (the first one is the headline), the
    width of its output head."""

    loss: LossFn
    metrics: tuple[Metric, ...]
    out_features: int


@dataclass(frozen=True)
class TrainingDefaults:
    """The hyper-parameters a benchmark is run with unless told otherwise.

    ``method_options`` holds the options the papers used on this benchmark for a method
    part, by the part's name (``{"auto-lambda": {"lr": 1e-4}}``); a run uses them unless
    its own options set the same option.
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.0
    optimizer: str = "adam"
    extra: dict[str, float] = field(default_factory=dict)
    method_options: dict[str, dict[str, float]] = field(default_factory=dict)



def auto_lambda_training(batch_size: int, weight_decay: float, auto_lambda_lr: float) -> TrainingDefaults:
    """The training of the Auto-Lambda paper's experiments: SGD with learning rate 0.1 and
    momentum 0.9, annealed to 0 by a cosine over 200 epochs, and Auto-Lambda's λ learning
    rate ``auto_lambda_lr``."""
    return TrainingDefaults(
        epochs=200, batch_size=batch_size, lr=0.1, weight_decay=weight_decay, momentum=0.9, optimizer="sgd",
        extra={"cosine_schedule": 1.0}, method_options={"auto-lambda": {"lr": auto_lambda_lr}},
    )

class Benchmark(ABC):
    """A real multi-task benchmark.

    Subclasses set ``name``, ``description``, ``specs`` (task -> :class:`TaskSpec`),
    ``primary`` (the primary task(s) of its auxiliary-learning mode) and ``defaults``, and
    implement :meth:`splits` (reading canonical files under ``root``, filling ``root`` from an
    offline source when it is empty) and :meth:`model` (a shared trunk with one head per
    requested task). ``representation`` names the model's submodule whose output every head
    reads (MGDA-UB works on its gradients), or is ``None`` where the model has no such one.
    """

    name: str
    description: str
    specs: dict[str, TaskSpec]
    primary: tuple[str, ...]
    defaults: TrainingDefaults
    representation: str | None = None

    @abstractmethod
    def splits(self, root: Path, seed: int, limit: int | None = None) -> Splits:
        """The data; ``limit`` caps the number of training samples (tests, quick runs)."""

    @abstractmethod
    def model(self, heads: Mapping[str, int]) -> nn.Module:
        """A fresh model returning ``{task: prediction}`` for the heads ``task -> width``."""

    def loader(self, dataset: Dataset, batch_size: int, shuffle: bool, generator: torch.Generator) -> Iterable[Any]:
        """Batches of ``dataset`` as :class:`~dynamtl.Tasks` expects them: ``(inputs, {task:
        target})`` by default. Multi-input benchmarks (one batch per task) override this."""
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)

    def tasks(self, names: Sequence[str] | None = None) -> Tasks:
        """The :class:`~dynamtl.Tasks` of ``names`` (default: all), validated."""
        names = list(self.specs) if names is None else list(names)
        task_indices(tuple(self.specs), names)
        return Tasks({n: self.specs[n].loss for n in names})


def default_root() -> Path:
    """Where data live unless a root is given: ``$DYNAMTL_DATA`` or ``~/.cache/dynamtl``."""
    return Path(os.environ.get("DYNAMTL_DATA", Path.home() / ".cache" / "dynamtl"))
