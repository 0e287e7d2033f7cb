"""Aligned-MTL: make the task gradients orthogonal and of equal norm (Senushkin et al., 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._solvers import (
    check_jacobian,
    combine_rows,
    gramian,
    nonzero_rows,
    numbers,
    per_task,
    rank_tolerance,
)
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts

Scale = Literal["min", "median", "mean"]


class AlignedMTL(GradientAggregation):
    r"""Aligned-MTL: align the principal components of the task gradients.

    With the Gram matrix of the rows G = J Jᵀ = V Σ² Vᵀ (eigenvalues σ₁² ≥ … ≥ σ_R² > 0 of
    rank R), the balance transformation

    .. math::

        B = \sigma\, V_R \,\Sigma_R^{-1} V_R^\top ,\qquad \hat J = B J ,\qquad
        d = \hat J^\top w = J^\top (B w)

    replaces the rows by Ĵ = σ U Wᵀ (J = U Σ Wᵀ): with full rank the aligned task gradients
    are orthogonal and all of norm σ (Ĵ Ĵᵀ = σ² I), so the condition number of the linear
    system is 1 and no task dominates. σ² is the smallest positive eigenvalue (the paper's
    choice, ``scale="min"``), their median or their mean. w are the task weights of the
    update (default 1/T). Eigenvalues at or below T·max(σ²)·10ε (ε of the Jacobian's dtype)
    count as zero.

    From *Independent Component Alignment for Multi-Task Learning* (Senushkin, Patakin,
    Kuznetsov, Konushin, CVPR 2023), Algorithm 1.

    Weighted rows: the rows are λₖ ∇Lₖ. The alignment equalises the row norms, so λ does not
    act as a task importance here (it changes which orthogonal basis the rows are aligned
    to and the scale σ, but every aligned row has norm σ); give the importance as ``pref``.
    Rows that are exactly zero (λₖ = 0, or a task whose loss has no gradient this step) are
    left out: the update is Aligned-MTL on the other rows, with w = 1/T' over the T' others
    (or their ``pref``).

    Args:
        scale: ``"min"`` (default, the paper), ``"median"`` or ``"mean"`` of the positive
            eigenvalues of G for σ². TorchJD calls ``"mean"`` ``"rmse"``; its ``"median"``
            takes the lower middle value for an even rank, this one the average of the two.
        pref: the task weights w, one per task (default 1/T each). Their scale matters
            (the update grows with it), so each is 0 or between 1e-30 and 1e30.

    >>> import torch
    >>> AlignedMTL().combine(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    tensor([0.5000, 0.5000])
    """

    facts = aggregation_facts(
        "aligned-mtl", "Aligned-MTL", "Senushkin et al., Independent Component Alignment, CVPR 2023",
        options=("scale", "pref"),
    )

    option_ranges = intervals(pref="[0, inf)")
    weight_options = ("pref",)

    def __init__(self, scale: Scale = "min", pref: Sequence[float] | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.pref = None if pref is None else numbers(pref)

    def combine(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        num = jacobian.shape[0]
        pref = per_task(type(self).__name__, "pref", self.pref if self.pref is not None else 1.0, num)
        gram = gramian(jacobian)
        active = nonzero_rows(gram)
        weights = torch.zeros(num, dtype=torch.float64)
        if not active.any():
            return combine_rows(weights, jacobian)
        w = pref[active] if self.pref is not None else pref[active] / int(active.sum())
        values, vectors = torch.linalg.eigh(gram[active][:, active])
        top = float(values.max())
        kept = values > top * len(values) * rank_tolerance(jacobian)
        values, vectors = values[kept], vectors[:, kept]
        median = values.quantile(0.5, interpolation="midpoint")  # the mean of the middle two for an even rank
        sigma2 = {"min": values.min(), "median": median, "mean": values.mean()}[self.scale]
        balance = sigma2.sqrt() * (vectors / values.sqrt()) @ vectors.T
        weights[active] = balance @ w
        return combine_rows(weights, jacobian)
