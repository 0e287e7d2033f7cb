"""Fixed, hand-chosen task weights."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from dynamtl.facts import Facts
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
        if not weights:
            raise ValueError("Static needs a weight per task: Static({'task': 1.0, ...})")
        self.given = dict(weights)
        self.register_buffer("values", torch.zeros(0))

    def _on_bind(self) -> None:
        names = self.task_names or ()
        missing = [n for n in names if n not in self.given]
        if missing:
            raise ValueError(f"Static has no weight for task(s) {missing}; give one for each of {list(names)}")
        self.values = torch.tensor([float(self.given[n]) for n in names])

    def loss_weights(self, losses: Tensor) -> Tensor:
        return self.values.to(losses)

