"""IMTL-G: the update with equal projections on every task's unit gradient (Liu et al., 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from dynamtl.aggregation._solvers import (
    check_jacobian,
    combine_rows,
    gramian,
    nonzero_rows,
    rank_tolerance,
    warn_once,
)
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class IMTLG(GradientAggregation):
    r"""Impartial multi-task learning, gradient part: treat every task alike in direction.

    d = Σᵢ αᵢ gᵢ with Σᵢ αᵢ = 1 is chosen so that its projections on the unit task gradients
    uᵢ = gᵢ/‖gᵢ‖ are all equal: d·uᵢ = d·uⱼ. With the Gram matrix G = [gᵢ·gⱼ] and
    n = (‖g₁‖, …, ‖g_T‖), d·uᵢ = (Gα)ᵢ/‖gᵢ‖, so the condition is Gα ∝ n and the closed form is

    .. math::

        \alpha = \frac{G^{+} n}{\mathbf 1^\top G^{+} n}, \qquad d = \sum_i \alpha_i g_i ,

    the paper's closed form (α₂…α_T = g₁Uᵀ(DUᵀ)⁻¹, α₁ = 1 − Σ, with D and U the differences
    of the first gradient and unit gradient to the others') written on the T × T Gram matrix. From *Towards Impartial
    Multi-task Learning* (Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, ICLR 2021). With
    linearly dependent rows the pseudo-inverse G⁺ gives the least-squares α (as TorchJD's
    generalisation does), and the projections are then equal only approximately.

    Weighted rows: the rows are λₖ ∇Lₖ. The unit vectors uₖ do not depend on λₖ > 0; λ enters
    through Σαᵢ = 1, which puts d in the affine hull of the weighted rows, so it sets d's
    length and, with T ≥ 3, its direction inside the span. Rows that are exactly zero
    (λₖ = 0, or no shared parameter) get α = 0.

    If 1ᵀG⁺n vanishes (no direction with equal projections lies in the affine hull), a
    warning is logged (once) and the mean of the rows is returned.

    The paper pairs IMTL-G with IMTL-L, a learned loss scaling; IMTL-L is a weighting and is
    not part of this aggregation.

    >>> import torch
    >>> IMTLG().combine(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    tensor([0.7500, 0.7500])
    """

    facts = aggregation_facts("imtl-g", "IMTL-G", "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021")

    def __init__(self) -> None:
        super().__init__()
        self._warned: set[str] = set()

    def combine(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        gram = gramian(jacobian)
        active = nonzero_rows(gram)
        weights = torch.zeros(len(gram), dtype=torch.float64)
        if not active.any():
            return combine_rows(weights, jacobian)
        sub = gram[active][:, active]
        v = torch.linalg.lstsq(sub, sub.diagonal().sqrt(), rcond=rank_tolerance(jacobian), driver="gelsd").solution
        total = float(v.sum())
        if abs(total) <= 1e-10 * float(v.abs().sum()):
            warn_once(
                self._warned,
                "IMTLG: no update with equal projections lies in the affine hull of the rows; "
                "the mean gradient is used instead",
            )
            return combine_rows(torch.full((len(gram),), 1.0 / len(gram), dtype=torch.float64), jacobian)
        weights[active] = v / total
        return combine_rows(weights, jacobian)
