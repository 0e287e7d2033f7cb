"""PCGrad: project each task gradient off the gradients it conflicts with (Yu et al., 2020)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._solvers import (
    SeededGenerator,
    check_jacobian,
    combine_rows,
    gramian,
    random_orders,
)
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class PCGrad(GradientAggregation):
    r"""Projecting Conflicting Gradients ("gradient surgery").

    For every task i, starting from gᵢᴾᶜ = gᵢ, the other tasks j are visited in a uniformly
    random order; whenever gᵢᴾᶜ conflicts with gⱼ (gᵢᴾᶜ·gⱼ < 0), gᵢᴾᶜ is projected onto the
    normal plane of gⱼ:

    .. math::

        g_i^{PC} \leftarrow g_i^{PC} - \frac{g_i^{PC} \cdot g_j}{\lVert g_j \rVert^2}\, g_j ,
        \qquad d = \sum_i g_i^{PC} .

    From *Gradient Surgery for Multi-Task Learning* (Yu, Kumar, Gupta, Levine, Hausman,
    Finn, NeurIPS 2020), Algorithm 1. Without any conflict d = Σᵢ gᵢ, the gradient of the
    summed loss. Each gᵢᴾᶜ is a combination Σⱼ cᵢⱼ gⱼ, so the projections run on the T × T
    Gram matrix and the rows are combined once.

    Weighted rows: the rows are λₖ ∇Lₖ. Whether two tasks conflict does not depend on λ > 0,
    and a projection removes a component of gᵢ whatever the scale of gⱼ, so λᵢ scales task
    i's own contribution; with no conflict d is the gradient of Σ λₖ Lₖ (:class:`Sum`).

    Args:
        seed: seed of the generator of the random task orders. Its state is saved in the
            state dict, so a reloaded PCGrad continues with the same orders.

    Differences to the official code: the random order is drawn from a seeded generator of
    the aggregation (not Python's global ``random``); the result is the sum of the projected
    gradients (the paper's Algorithm 1), not their mean.

    >>> import torch
    >>> PCGrad().combine(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    tensor([0.5000, 1.5000])
    """

    facts = aggregation_facts(
        "pcgrad", "PCGrad", "Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020",
        context={"seed": "seed"},
    )

    option_ranges = intervals(seed="[0, inf)")

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.generator = SeededGenerator(seed)

    def combine(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        gram = gramian(jacobian).tolist()
        num = len(gram)
        weights = [0.0] * num
        for i, order in enumerate(random_orders(self.generator, num)):
            coefficients = [0.0] * num
            coefficients[i] = 1.0
            products = list(gram[i])  # gᵢᴾᶜ · gₖ for every k
            for j in order:
                if products[j] < 0.0 and gram[j][j] > 0.0:
                    shift = products[j] / gram[j][j]
                    coefficients[j] -= shift
                    products = [p - shift * q for p, q in zip(products, gram[j])]
            weights = [w + c for w, c in zip(weights, coefficients)]
        return combine_rows(weights, jacobian)

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.load(state["generator"])
