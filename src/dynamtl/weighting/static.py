"""Fixed, hand-chosen task weights."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch
from torch import Tensor

from dynamtl.facts import Facts
from dynamtl.tasks import expect_mapping, task_indices
from dynamtl.weighting.base import LossWeighting


class Static(LossWeighting):
    """λᵢ = cᵢ, constants given per task: the loss is Σᵢ cᵢ Lᵢ.

    Args:
        weights: task name -> weight. Every task of the model needs one.

    >>> import torch
    >>> Static({"a": 1.0, "b": 0.5})({"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    tensor(4.)
    """

    facts = Facts("static", "Static", "losses", "fixed hand-chosen weights", options=("weights",))

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        expect_mapping(weights, "Static", "task name -> weight", "Static({'seg': 1.0, 'depth': 0.5})")
        if not weights:
            raise ValueError("Static needs a weight per task: Static({'task': 1.0, ...})")
        not_numbers = {n: w for n, w in weights.items() if not _is_number(w)}
        if not_numbers:
            raise TypeError(f"Static's weights must be numbers; task(s) {not_numbers} are not")
        self.given = dict(weights)
        self.register_buffer("values", torch.zeros(0))

    def _on_bind(self) -> None:
        names = self.task_names or ()
        missing = [n for n in names if n not in self.given]
        if missing:
            raise ValueError(f"Static has no weight for task(s) {missing}; give one for each of {list(names)}")
        task_indices(names, self.given, role="weighted")  # rejects unknown names
        self.values = torch.tensor([float(self.given[n]) for n in names])

    def loss_weights(self, losses: Tensor) -> Tensor:
        return self.values.to(losses)


def _is_number(value: object) -> bool:
    """A real number (a one-element tensor included), not a bool or a string."""
    if isinstance(value, Tensor):
        return value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
