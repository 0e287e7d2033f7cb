"""GLS: the geometric mean of the losses (Chennupati et al., CVPR Workshops 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from dynamtl.context import StepContext, widened
from dynamtl.facts import Facts
from dynamtl.weighting.base import LossWeighting


class GLS(LossWeighting):
    r"""Geometric loss strategy: minimise the geometric mean of the task losses.

    .. math::

        S(L) = \Big(\prod_i L_i\Big)^{1/T}, \qquad
        \lambda_i = \frac{\partial S}{\partial L_i} = \frac{S(L)}{T\,L_i},

    so Σᵢ λᵢLᵢ = S(L) (value and gradient, λ held constant). The gradient of S is that of
    the mean of the log-losses times S: each task's relative decrease counts alike, and a
    task whose loss is small gets a large weight. From *MultiNet++: Multi-Stream Feature
    Aggregation and Geometric Loss Strategy for Multi-Task Learning* (Chennupati, Sistu,
    Yogamani, Rawashdeh, CVPR Workshops 2019). Computed in log space (S = exp(mean log L)),
    so many tasks do not underflow the product.

    A task without a graph in this step (no labelled sample) is left out: λ = 0 and S is the
    geometric mean of the others. Every other loss must be positive: a loss ≤ 0 (or not
    finite) raises ``ValueError`` naming the task; add a small constant to a loss that can
    reach 0.

    >>> import torch
    >>> w = GLS().bind(["a", "b"])
    >>> w.loss_weights(torch.tensor([1.0, 4.0]))
    tensor([1.0000, 0.2500])
    """

    facts = Facts(
        "gls", "GLS", "losses",
        "Chennupati, Sistu, Yogamani & Rawashdeh, MultiNet++: Geometric Loss Strategy, CVPR Workshops 2019",
    )

    def weights(self, ctx: StepContext) -> Tensor:
        return self.loss_weights(widened(ctx.losses.detach()), torch.tensor(ctx.present))

    def loss_weights(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        """λ from the losses; ``present``: which tasks have a loss with a graph in this step
        (all by default). Absent tasks get λ = 0 and the mean is over the others."""
        here = torch.ones_like(losses, dtype=torch.bool) if present is None else present.to(losses.device)
        self.refuse_bad_losses(losses, here, "takes the geometric mean of the losses",
                               "add a small constant to a loss that can reach 0", positive=True)
        weights = torch.zeros_like(losses)
        if bool(here.any()):
            kept = losses[here]
            weights[here] = torch.exp(kept.log().mean()) / (kept.numel() * kept)
        return weights
