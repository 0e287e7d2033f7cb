"""Equal weighting: the plain sum of the task losses."""

from __future__ import annotations

import torch
from torch import Tensor

from dynamtl.facts import Facts
from dynamtl.weighting.base import LossWeighting


class Equal(LossWeighting):
    """λᵢ = 1 for every task: the loss is Σᵢ Lᵢ. The baseline every method is compared to.

    >>> import torch
    >>> Equal()({"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    tensor(5.)
    """

    facts = Facts("equal", "Equal", "losses", "the plain sum of the losses")

    def loss_weights(self, losses: Tensor) -> Tensor:
        return torch.ones_like(losses)
