"""Mini-batches of a benchmark's splits, in an order that is a function of the seed.

Pass p over a stream (``"train"``: the epochs; ``"meta"``: the meta batches; ``"extra"``:
the further training batches of aggregations that read several per step) draws its
order from a generator seeded by (seed, stream, p) alone, never from a generator whose
state carries over, so the position in the data — (epoch, batch) for the training stream,
the number of batches drawn for the meta and extra streams — is the whole state of every loader: a
resumed run rebuilds the pass it stopped in and skips exactly the batches already done.

Splits held as :class:`~dynamtl.benchmarks.base.MultiTaskTensors` are sliced directly
(measured 13× faster than a ``DataLoader`` at batch 256 of Census-Income rows); other data
sets (images read from files, multi-input domains) go through the benchmark's own
:meth:`~dynamtl.benchmarks.base.Benchmark.loader`. When such a loader draws augmentations
from the global random state, skipping batches draws them too: restore the global random
state *after* :meth:`Passes.iterate` has skipped (the trainer does).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dynamtl.benchmarks.base import Benchmark, MultiTaskTensors


def derived_seed(*parts: object) -> int:
    """A 63-bit seed determined by ``parts`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested in tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


class Passes:
    """Passes over one split: ``iterate(p, start)`` yields the batches of pass ``p`` from
    batch ``start`` on.

    Args:
        benchmark: whose :meth:`~dynamtl.benchmarks.base.Benchmark.loader` batches data
            sets other than :class:`MultiTaskTensors`.
        data: the split.
        batch_size: samples per batch (per task for multi-input benchmarks).
        seed, stream: what the order of every pass is drawn from.
        shuffle: a new random order every pass (else the stored order).
        device: where batches go.
    """

    def __init__(
        self, benchmark: Benchmark, data: Dataset, batch_size: int, seed: int, stream: str, shuffle: bool,
        device: torch.device,
    ) -> None:
        self.benchmark, self.data, self.batch_size = benchmark, data, batch_size
        self.seed, self.stream, self.shuffle, self.device = seed, stream, shuffle, device
        self.per_pass = -(-len(data) // batch_size) if isinstance(data, MultiTaskTensors) else len(self._loader(0))

    def iterate(self, pass_: int, start: int = 0) -> Iterator[Any]:
        """The batches of pass ``pass_`` after the first ``start``, which are skipped now."""
        if isinstance(self.data, MultiTaskTensors):
            order = self._order(pass_)
            size = self.batch_size
            return (self._slice(order[i * size : (i + 1) * size]) for i in range(start, self.per_pass))
        batches = iter(self._loader(pass_))
        for _ in itertools.islice(batches, start):
            pass
        return (to_device(batch, self.device) for batch in batches)

    def _generator(self, pass_: int) -> torch.Generator:
        return torch.Generator().manual_seed(derived_seed(self.seed, self.stream, pass_))

    def _order(self, pass_: int) -> Tensor:
        if not isinstance(self.data, Sized):
            raise TypeError(f"index orders need a data set with a length, got a {type(self.data).__name__}")
        n = len(self.data)
        return torch.randperm(n, generator=self._generator(pass_)) if self.shuffle else torch.arange(n)

    def _loader(self, pass_: int) -> Any:
        return self.benchmark.loader(self.data, self.batch_size, self.shuffle, self._generator(pass_))

    def _slice(self, indices: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        assert isinstance(self.data, MultiTaskTensors)
        inputs = self.data.inputs[indices].to(self.device)
        return inputs, {task: t[indices].to(self.device) for task, t in self.data.targets.items()}


class MetaStream:
    """An endless stream of batches (the meta batches; the extra training batches of
    aggregations that read several per step): reshuffled passes over a split; ``drawn``
    (the number of batches taken) is its whole state, set by :meth:`seek`."""

    def __init__(self, passes: Passes) -> None:
        self.passes = passes
        self.drawn = 0
        self._batches: Iterator[Any] = iter(())

    def seek(self, drawn: int) -> None:
        """Continue after ``drawn`` batches (skipping, now, those of the current pass)."""
        self.drawn = drawn
        pass_, index = divmod(drawn, self.passes.per_pass)
        self._batches = self.passes.iterate(pass_, index)

    def next(self) -> Any:
        if self.drawn % self.passes.per_pass == 0:
            self._batches = self.passes.iterate(self.drawn // self.passes.per_pass)
        self.drawn += 1
        return next(self._batches)
