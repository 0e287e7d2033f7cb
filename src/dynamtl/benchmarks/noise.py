"""WithNoiseTask: any benchmark plus an auxiliary task of pure-noise labels."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dynamtl.benchmarks.base import Benchmark, MultiTaskTensors, Splits, TaskSpec
from dynamtl.data._files import seeded_generators
from dynamtl.metrics import ACCURACY

NOISE = "noise"


class WithNoiseTask(Benchmark):
    """A benchmark with one more auxiliary task, ``"noise"``, whose labels are pure noise.

    The robustness test of Auto-Lambda (Liu et al., TMLR 2022): an auxiliary task that
    carries no information about anything should receive a low weight λ from a weighting
    that learns which tasks help the primary ones. Every sample of every split gets a
    class drawn uniformly from ``0 … classes − 1``, independently of its inputs and of its
    other targets, from a random stream fixed by ``seed`` (one stream per split, the same
    whatever the data seed of :meth:`splits`); the best possible accuracy on unseen
    samples is chance, 1 / ``classes``. The task is a ``classes``-way cross-entropy with
    the accuracy metric and its own head on the wrapped model (``model(heads)`` passes the
    ``"noise"`` head on to the wrapped builder).

    Everything else (data, licence, the other tasks, ``primary``, ``defaults``) is the
    wrapped benchmark's. The noise task is never primary and **never counts in Δ_MTL**:
    pass only the wrapped benchmark's tasks to :func:`~dynamtl.metrics.delta_mtl`
    (``{t: list(s.metrics) for t, s in benchmark.specs.items()}``).

    Args:
        benchmark: the benchmark to extend; it must not have a task named ``"noise"``.
        classes: the number of noise classes (≥ 2).
        seed: fixes the noise labels.
    """

    def __init__(self, benchmark: Benchmark, classes: int = 10, seed: int = 0) -> None:
        if classes < 2:
            raise ValueError(f"classes must be >= 2 for a classification task, got {classes}")
        if NOISE in benchmark.specs:
            raise ValueError(f"{benchmark.name!r} already has a task named {NOISE!r}: it cannot take a second one")
        self.benchmark, self.classes, self.seed = benchmark, classes, seed
        self.name = f"{benchmark.name}+{NOISE}"
        self.description = f"{benchmark.description}; plus a {classes}-class pure-noise auxiliary task"
        self.specs = {**benchmark.specs, NOISE: TaskSpec(F.cross_entropy, (ACCURACY,), classes)}
        self.primary = benchmark.primary
        self.defaults = benchmark.defaults
        self.representation = benchmark.representation

    def splits(self, root: Path, seed: int, limit: int | None = None) -> Splits:
        inner = self.benchmark.splits(root, seed, limit)
        streams = seeded_generators(self.seed, 3)
        parts = []
        for split, data, stream in zip(("train", "val", "test"), (inner.train, inner.val, inner.test), streams):
            if not isinstance(data, MultiTaskTensors):
                raise TypeError(
                    f"the noise task extends in-memory benchmarks: {type(self.benchmark).__name__}'s {split} data "
                    f"is a {type(data).__name__}, not MultiTaskTensors"
                )
            noise = torch.randint(self.classes, (len(data),), generator=stream)
            parts.append(MultiTaskTensors(data.inputs, {**data.targets, NOISE: noise}))
        return Splits(*parts)

    def model(self, heads: Mapping[str, int]) -> nn.Module:
        return self.benchmark.model(heads)
