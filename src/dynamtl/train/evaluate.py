"""Every task's loss and metrics over a whole split."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dynamtl.benchmarks.base import TaskSpec


@dataclass(frozen=True)
class Evaluation:
    """``metrics``: task -> metric name -> value; ``losses``: task -> mean loss per sample."""

    metrics: dict[str, dict[str, float]]
    losses: dict[str, float]

    def flat(self, prefix: str) -> dict[str, float]:
        """``{"<prefix>/<task>/<metric>": …}`` and ``{"<prefix>_loss/<task>": …}`` for logs."""
        out = {f"{prefix}_loss/{task}": value for task, value in self.losses.items()}
        out.update({f"{prefix}/{task}/{name}": v for task, m in self.metrics.items() for name, v in m.items()})
        return out


def evaluate(
    model: nn.Module, specs: Mapping[str, TaskSpec], batches: Iterable[Any], *, multi_input: bool
) -> Evaluation:
    """Metrics and losses of ``model`` (in eval mode, without gradients) for the tasks
    ``specs`` over every batch of a split, with streaming metric accumulators.

    Batches follow :class:`~dynamtl.Tasks`: ``(inputs, {task: target})``, or with
    ``multi_input`` ``{task: (inputs, target)}``. The loss of a batch is weighted by its
    number of samples, so the mean is per sample for losses that average over the batch.
    """
    was_training = model.training
    model.eval()
    states = {task: [metric.start() for metric in spec.metrics] for task, spec in specs.items()}
    sums, counts = dict.fromkeys(specs, 0.0), dict.fromkeys(specs, 0)
    try:
        with torch.no_grad():
            for batch in batches:
                for task, (prediction, target) in _predictions(model, batch, specs, multi_input).items():
                    sums[task] += float(specs[task].loss(prediction, target)) * len(target)
                    counts[task] += len(target)
                    for state in states[task]:
                        state.update(prediction, target)
    finally:
        model.train(was_training)
    return Evaluation(
        {task: {m.name: float(s.compute()) for m, s in zip(specs[task].metrics, states[task])} for task in specs},
        {task: sums[task] / counts[task] for task in specs},
    )


def _predictions(
    model: nn.Module, batch: Any, tasks: Iterable[str], multi_input: bool
) -> dict[str, tuple[Tensor, Tensor]]:
    """Task -> (prediction, target) of one batch."""
    if multi_input:
        return {task: (model(batch[task][0], task), batch[task][1]) for task in tasks}
    inputs, targets = batch
    outputs = model(inputs)
    return {task: (outputs[task], targets[task]) for task in tasks}
