"""ConFIG: the conflict-free update with equal cosine to every task gradient (Liu et al., 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._dual_cone import checked_preference, preference
from dynamtl.aggregation._solvers import check_jacobian, gramian, nonzero_rows, rank_tolerance
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class ConFIG(GradientAggregation):
    r"""Conflict-Free Inverse Gradients: a direction with the same (preference-weighted)
    cosine to every task gradient, scaled by the gradients' projections on it.

    With the unit rows ûᵢ = gᵢ/‖gᵢ‖ stacked in Û and the preference p (default all 1),

    .. math::

        g_c = \hat U^{+} p, \qquad g_u = \frac{g_c}{\lVert g_c \rVert}, \qquad
        d = \Big(\sum_i g_i \cdot g_u\Big)\, g_u ,

    so ûᵢ·g_c = pᵢ for every task when the gradients are linearly independent: every task's
    cosine with d is proportional to its preference, all positive, and no task conflicts
    with d. From *ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks* (Liu, Chu, Thuerey, ICLR 2025; arXiv 2024), Equation 2. Written on the T × T Gram
    matrix: g_c = Ûᵀβ with β = (ÛÛᵀ)⁺p, so d = Jᵀα with c = β/‖g‖ (elementwise) and
    α = c (1ᵀGc)/(cᵀGc). With linearly dependent gradients the pseudo-inverse gives the
    least-squares g_c and the cosines are equal only approximately; where no direction has
    the asked cosines at all (opposite gradients, of any lengths), g_c is 0 and so is d.

    Weighted rows: the rows are λₖ∇Lₖ. The unit rows, and so the direction g_u, do not
    depend on λₖ > 0; λ enters the length Σ gᵢ·g_u only. Rows that are exactly zero have no
    direction and are left out (α = 0).

    Args:
        pref: the preference p, one non-negative value per task (default 1 each). Only
            the ratios matter (``[2, 2]`` is ``[1, 1]``): p is divided by its largest value
            (float64) first, so any positive scale is taken.

    Differences to the official code: the same maths on the Gram matrix instead of the
    pseudo-inverse of the D-dimensional matrix of unit gradients (equal up to rounding);
    the official code's momentum variant (M-ConFIG) is not offered.

    >>> import torch
    >>> ConFIG().combine(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    tensor([1.5000, 1.5000])
    """

    facts = aggregation_facts(
        "config", "ConFIG", "Liu, Chu & Thuerey, ConFIG: Towards Conflict-free Training of PINNs, ICLR 2025",
        options=("pref",),
    )

    option_ranges = intervals(pref="[0, inf)")
    weight_options = ("pref",)
    relative_weight_options = ("pref",)

    def __init__(self, pref: Sequence[float] | None = None) -> None:
        super().__init__()
        self.pref = checked_preference(pref)

    def row_weights(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        gram = gramian(jacobian)
        num = len(gram)
        pref = preference("ConFIG", self.pref, num, 1.0)
        pref = pref / pref.max()  # α does not depend on p's scale: [1e-320, 1e-320] and [1e308, 1e308] are [1, 1]
        active = nonzero_rows(gram)
        alpha = torch.zeros(num, dtype=torch.float64)
        if not active.any():
            return alpha
        sub = gram[active][:, active]
        norms = sub.diagonal().sqrt()
        units = sub / torch.outer(norms, norms)
        beta = torch.linalg.lstsq(units, pref[active], rcond=rank_tolerance(jacobian), driver="gelsd").solution
        # ‖g_c‖² = βᵀÛÛᵀβ; at rounding level no direction has the asked cosines (opposite
        # gradients: the least-squares g_c is 0) and its rescaling below would blow rounding up
        if float(beta @ units @ beta) <= rank_tolerance(jacobian) * float(pref[active].max()) ** 2:
            return alpha
        c = beta / norms
        squared = float(c @ sub @ c)
        alpha[active] = c * float((sub @ c).sum()) / squared
        return alpha
