"""Task metrics over a whole split, and Δ_MTL, the relative gain over single-task learning."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class MetricState(Protocol):
    """A metric being accumulated over a split, batch by batch."""

    def update(self, predictions: Tensor, targets: Tensor) -> None: ...

    def compute(self) -> float: ...


@dataclass(frozen=True)
class Metric:
    """A metric of one task over a whole split.

    ``fn(predictions, targets) -> value`` takes the whole split's predictions at once
    (fine for tabular and image-level tasks); metrics of dense predictions that do not
    fit in memory give ``streaming``, a factory of :class:`MetricState` accumulators
    (a confusion matrix, running sums). ``higher_is_better`` fixes the sign lᵢ in Δ_MTL
    (lᵢ = 1 when lower is better).
    """

    name: str
    fn: Callable[[Tensor, Tensor], float] | None
    higher_is_better: bool
    streaming: Callable[[], MetricState] | None = None

    def start(self) -> MetricState:
        """A fresh accumulator: ``update`` it with every batch, then ``compute``."""
        if self.streaming is not None:
            return self.streaming()
        if self.fn is None:
            raise ValueError(f"metric {self.name!r} has neither fn nor streaming")
        return _Collected(self.fn)


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


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of samples whose arg-max class is the label."""
    return float((logits.argmax(dim=-1) == labels).double().mean())


def binary_auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of scores (a logit per sample, or two-class logits) for 0/1
    labels: the Mann-Whitney probability that a positive outranks a negative, ties counting ½."""
    if scores.dim() == 2:
        scores = scores[:, 1] - scores[:, 0]
    labels = labels.bool()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both classes among the labels of the split")
    order = torch.argsort(scores.double())
    sorted_scores = scores.double()[order]
    ranks = torch.empty_like(sorted_scores)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
    ranks[order] = average_rank[inverse]
    rank_sum = float(ranks[labels].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def mean_absolute_error(predictions: Tensor, targets: Tensor) -> float:
    """Mean |prediction − target| over all entries."""
    return float((predictions.double() - targets.double()).abs().mean())


ACCURACY = Metric("accuracy", accuracy, higher_is_better=True)
AUC = Metric("auc", binary_auc, higher_is_better=True)
MAE = Metric("mae", mean_absolute_error, higher_is_better=False)


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
