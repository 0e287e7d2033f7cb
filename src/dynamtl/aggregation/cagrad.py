"""CAGrad: the best worst-case improvement near the mean gradient (Liu et al., 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._solvers import (
    cagrad_weights,
    check_jacobian,
    combine_rows,
    gramian,
    nonzero_rows,
    warn_once,
)
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class CAGrad(GradientAggregation):
    r"""Conflict-Averse Gradient descent.

    The update d maximises the worst improvement rate of the tasks in a ball around the
    mean gradient g₀ = (1/T) Σᵢ gᵢ:

    .. math::

        \max_d \min_i \; g_i \cdot d \quad \text{s.t.} \quad \lVert d - g_0 \rVert \le c \lVert g_0 \rVert .

    Its dual is a problem over the simplex, w* = argmin_w g_wᵀg₀ + c‖g₀‖ ‖g_w‖ with
    g_w = Σᵢ wᵢ gᵢ, and d = g₀ + c‖g₀‖ g_w* / ‖g_w*‖. With ``rescale`` the update is divided
    by 1 + c², which keeps its size comparable across c. For c = 0, d = g₀ exactly.

    From *Conflict-Averse Gradient Descent for Multi-task Learning* (Liu, Liu, Jin, Stone,
    Liu, NeurIPS 2021), Algorithm 1. The dual is solved with SciPy's SLSQP on the T × T
    Gram matrix, as the official code does (``pip install 'dynamtl[solvers]'``; c = 0 needs
    no SciPy).

    Weighted rows: the rows are λₖ ∇Lₖ, so g₀ is the mean of the weighted gradients, 1/T
    times the gradient of Σ λₖ Lₖ, and the worst case is over the weighted task rates
    λᵢ gᵢ·d. This is how Auto-Lambda combines with CAGrad.

    Args:
        c: radius of the ball around g₀, relative to ‖g₀‖ (the paper's c; default 0.4).
            c = 0 is the mean gradient.
        rescale: divide d by 1 + c² (the official code's default ``rescale=1``). Its
            ``rescale=2`` (division by 1 + c) is not offered.

    Every c ≥ 0 is solved as posed. When 0 is in the convex hull of the rows (no d improves
    every task) and the ball reaches the cone {d : gᵢ·d ≥ 0 for every i} (always for
    c ≥ 1, since the ball then holds 0), the best worst rate is 0 and the dual's recovery
    formula is undefined (g_w* = 0): d is then the point of that cone nearest g₀ (the
    projection of g₀ on it), which lies in the ball. The official code returns g₀ there,
    which can make a task worse.

    Rows that are exactly zero (λₖ = 0, or a task whose loss has no gradient this step) are
    left out, g₀ included: the update equals CAGrad on the other rows (a zero row would
    otherwise pin the worst rate at 0 and turn d into g₀). When SLSQP does not converge, a
    warning is logged (once) and the mean gradient g₀ is returned.

    >>> import torch
    >>> CAGrad(c=0.0).combine(torch.tensor([[1.0, 0.0], [-1.0, 2.0]]))
    tensor([0., 1.])
    """

    facts = aggregation_facts(
        "cagrad", "CAGrad", "Liu et al., Conflict-Averse Gradient Descent, NeurIPS 2021", options=("c", "rescale")
    )

    option_ranges = intervals(c="[0, inf)")

    def __init__(self, c: float = 0.4, rescale: bool = True) -> None:
        super().__init__()
        self.c = float(c)
        self.rescale = rescale
        self._warned: set[str] = set()

    def combine(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        gram = gramian(jacobian)
        active = nonzero_rows(gram)
        weights = torch.zeros(len(gram), dtype=torch.float64)
        if not active.any():
            return combine_rows(weights, jacobian)
        solved, converged = cagrad_weights(gram[active][:, active], self.c, type(self).__name__)
        if not converged:
            warn_once(self._warned, "CAGrad: SLSQP did not converge; the mean gradient is used instead")
        elif self.rescale:
            solved = solved / (1.0 + self.c**2)
        weights[active] = solved
        return combine_rows(weights, jacobian)
