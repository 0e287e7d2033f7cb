"""Random loss weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.facts import Facts
from dynamtl.weighting.base import LossWeighting


class RLW(LossWeighting):
    """Random Loss Weighting: λ = T · softmax(z), z ~ N(0, I), drawn anew at every step.

    From *Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning* (Lin et al., 2022). The paper's λ sums to 1; here it is scaled to sum to T so
    that the loss has the scale of :class:`Equal` (a different learning rate is not needed
    to compare them). The draws come from the weighting's own generator, seeded by
    ``seed`` and saved in its state dict, so runs repeat and resume exactly.

    Args:
        seed: seed of the generator.

    >>> import torch
    >>> w = RLW(seed=0).bind(["a", "b", "c"]).loss_weights(torch.ones(3))
    >>> round(float(w.sum()), 6)
    3.0
    """

    facts = Facts(
        "rlw", "RLW", "losses", "Lin et al., Reasonable Effectiveness of Random Weighting, TMLR 2022",
        context={"seed": "seed"},
    )

    option_ranges = intervals(seed="[0, inf)")

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(int(seed))

    def loss_weights(self, losses: Tensor) -> Tensor:
        z = torch.randn(self.num_tasks, generator=self.generator, dtype=torch.float64)
        return (self.num_tasks * torch.softmax(z, dim=0)).to(losses)

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
