"""Task metrics over a whole split, and Δ_MTL, the relative gain over single-task learning.

Accuracy, AUC and MAE are torchmetrics' (``pip install 'dynamtl[metrics]'``), imported
only when a metric is first updated, so ``import dynamtl.metrics`` needs torch alone.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


class MetricState(Protocol):
    """A metric being accumulated over a split, batch by batch."""

    def update(self, predictions: Tensor, targets: Tensor) -> None: ...

    def compute(self) -> float: ...


@dataclass(frozen=True)
class Metric:
    """A metric of one task over a whole split.

    ``streaming`` is a factory of :class:`MetricState` accumulators (a torchmetrics metric,
    a confusion matrix, running sums), updated batch by batch; ``fn(predictions, targets)
    -> value`` is the alternative for a metric of the whole split's predictions at once
    (kept in memory until ``compute``). ``higher_is_better`` fixes the sign lᵢ in Δ_MTL
    (lᵢ = 1 when lower is better).
    """

    name: str
    fn: Callable[[Tensor, Tensor], float] | None
    higher_is_better: bool
    streaming: Callable[[], MetricState] | None = None

    def start(self, *, sync: bool = False) -> MetricState:
        """A fresh accumulator: ``update`` it with every batch, then ``compute``.

        ``sync=True``: the torchmetrics-backed states add up the updates of every process of
        an initialised ``torch.distributed`` group in ``compute`` (each process evaluated its
        own shard of the split; every process must call ``compute``). The trainer evaluates
        the whole split in every process and leaves it off."""
        if self.streaming is not None:
            state = self.streaming()
            if isinstance(state, TorchMetric):
                state.sync = sync
            return state
        if self.fn is None:
            raise ValueError(f"metric {self.name!r} has neither fn nor streaming")
        return _Collected(self.fn)

    def value(self, predictions: Tensor, targets: Tensor) -> float:
        """The metric of one set of predictions (a whole split at once)."""
        state = self.start()
        state.update(predictions, targets)
        return state.compute()


class TorchMetric:
    """A :mod:`torchmetrics` metric as a :class:`MetricState`.

    ``build(predictions)`` makes the torchmetrics metric on the first update (so that the
    number of classes can come from the predictions' shape); ``prepare(predictions,
    targets)`` maps a batch to that metric's inputs. ``compute`` returns a float and, with
    :attr:`sync`, synchronises over the processes as torchmetrics does."""

    def __init__(
        self,
        build: Callable[[Tensor], Any],
        prepare: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        empty: str = "the split is empty",
    ) -> None:
        self.build, self.prepare, self.empty = build, prepare, empty
        self.metric: Any = None
        self.sync = False
        self.count = 0  # targets seen (after ``prepare``) by this process

    def update(self, predictions: Tensor, targets: Tensor) -> None:
        predictions, targets = predictions.detach(), targets.detach()
        if self.prepare is not None:
            predictions, targets = self.prepare(predictions, targets)
        if self.metric is None:
            self.metric = self.build(predictions).to(predictions.device)
        self.metric.update(predictions, targets)
        self.count += targets.numel()

    def compute(self) -> float:
        """The value; ``ValueError`` with ``empty`` when no target was seen (by this
        process, without :attr:`sync`)."""
        if self.metric is None or (self.count == 0 and not self.sync):
            raise ValueError(f"the metric is undefined: {self.empty}")
        self.metric.sync_on_compute = self.sync
        return float(self.metric.compute())


class _Collected:
    """Keeps every batch's predictions and targets, then applies ``fn`` to the whole split."""

    def __init__(self, fn: Callable[[Tensor, Tensor], float]) -> None:
        self.fn = fn
        self.predictions: list[Tensor] = []
        self.targets: list[Tensor] = []

    def update(self, predictions: Tensor, targets: Tensor) -> None:
        self.predictions.append(predictions.detach().cpu())
        self.targets.append(targets.detach().cpu())

    def compute(self) -> float:
        return self.fn(torch.cat(self.predictions), torch.cat(self.targets))


def _accuracy(logits: Tensor) -> Any:
    from torchmetrics.classification import MulticlassAccuracy

    return MulticlassAccuracy(num_classes=logits.shape[-1], average="micro")


def _auroc(scores: Tensor) -> Any:
    from torchmetrics.classification import BinaryAUROC

    class _BothClasses(BinaryAUROC):  # torchmetrics warns and returns 0 where the AUC is undefined
        def compute(self) -> Tensor:  # type: ignore[override]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = super().compute()
            if any("No positive samples" in str(w.message) or "No negative samples" in str(w.message) for w in caught):
                raise ValueError("AUC needs both classes among the labels of the split")
            return value

    return _BothClasses()


def _auc_inputs(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """A score per sample in (0, 1) and the 0/1 labels. Two-class logits become their
    difference; scores are mapped by the strictly increasing ½ + atan(s)/π (in float64),
    which keeps their order, the only thing an AUC depends on, where torchmetrics' sigmoid
    would round large scores to ties."""
    if scores.dim() == 2:
        scores = scores[:, 1] - scores[:, 0]
    return 0.5 + torch.atan(scores.double()) / math.pi, labels.long()


def _mae(predictions: Tensor) -> Any:
    from torchmetrics.regression import MeanAbsoluteError

    metric = MeanAbsoluteError()
    metric.set_dtype(torch.float64)
    return metric


def _as_float64(predictions: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    return predictions.double(), targets.double()


def mean_absolute_error(predictions: Tensor, targets: Tensor) -> float:
    """Mean |prediction − target| over all entries (float64), by torchmetrics."""
    from torchmetrics.functional import mean_absolute_error as mae

    return float(mae(predictions.double(), targets.double()))


ACCURACY = Metric("accuracy", None, higher_is_better=True, streaming=functools.partial(TorchMetric, _accuracy))
"""Share of samples whose arg-max class is the label (torchmetrics' micro-averaged
``MulticlassAccuracy``; logits ``[N, C]``, labels ``[N]``)."""
AUC = Metric("auc", None, higher_is_better=True, streaming=functools.partial(TorchMetric, _auroc, _auc_inputs))
"""Area under the ROC curve (torchmetrics' ``BinaryAUROC``) of a logit per sample, or of
two-class logits, for 0/1 labels: the probability that a positive outranks a negative, ties
counting ½. Raises ``ValueError`` when the split lacks a class."""
MAE = Metric("mae", None, higher_is_better=False, streaming=functools.partial(TorchMetric, _mae, _as_float64))
"""Mean |prediction − target| over all entries (torchmetrics' ``MeanAbsoluteError``, float64)."""


def delta_mtl(
    results: Mapping[str, Mapping[str, float]],
    single_task: Mapping[str, Mapping[str, float]],
    metrics: Mapping[str, list[Metric]],
) -> float:
    r"""Δ_MTL = (1/K) Σₖ (−1)^{lₖ} (Mₖ − M_STL,ₖ) / M_STL,ₖ over all K (task, metric) pairs
    of ``metrics``, with lₖ = 1 when lower is better; in percent.

    ``results`` and ``single_task`` map task -> metric name -> value. Only the tasks in
    ``metrics`` count (leave auxiliary and noise tasks out in auxiliary learning).

    >>> from dynamtl.metrics import ACCURACY, MAE
    >>> delta_mtl({"a": {"accuracy": 0.9}, "b": {"mae": 1.0}},
    ...           {"a": {"accuracy": 0.8}, "b": {"mae": 2.0}},
    ...           {"a": [ACCURACY], "b": [MAE]})
    31.25
    """
    terms = []
    for task, task_metrics in metrics.items():
        for metric in task_metrics:
            ours, reference = results[task][metric.name], single_task[task][metric.name]
            if reference == 0:
                raise ValueError(f"the single-task {metric.name} of task {task!r} is 0: Δ_MTL is undefined")
            sign = 1.0 if metric.higher_is_better else -1.0
            terms.append(sign * (ours - reference) / abs(reference))
    if not terms:
        raise ValueError("Δ_MTL needs at least one task metric")
    return 100.0 * sum(terms) / len(terms)
