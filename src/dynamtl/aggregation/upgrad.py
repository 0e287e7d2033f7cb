"""UPGrad: the mean of the task gradients each projected onto the dual cone (Quinton & Rey, 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dynamtl.aggregation._dual_cone import checked_preference, dual_cone_weights, normalized_gram, preference
from dynamtl.aggregation._solvers import check_jacobian, gramian, nonzero_rows, warn_once
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class UPGrad(GradientAggregation):
    r"""Unconflicting Projection of Gradients: project each task gradient onto the dual cone
    of all of them, and average.

    With the rows g₁ … g_T of J and π_J the projection onto the dual cone
    {x : gᵢ·x ≥ 0 for every i} (the directions that conflict with no task),

    .. math::

        d = \sum_i p_i \, \pi_J(g_i), \qquad \pi_J(J^\top u) = J^\top v(u), \quad
        v(u) = \arg\min_{v \ge u} v^\top G v ,

    with G = JJᵀ and the preference p (default pᵢ = 1/T). So d = Jᵀα with
    α = Σᵢ pᵢ v(eᵢ): α ≥ p, and d conflicts with no task (Jd = Gα ≥ 0). Where no pair of
    gradients conflicts (G ≥ 0 entrywise) every gᵢ is already in the cone and d is the
    p-weighted sum. d is linear in the scale of J, and α does not depend on it. From
    *Jacobian Descent for Multi-Objective Optimization* (Quinton & Rey, 2024), Section 4.
    Each v(eᵢ) is an exact solution of the quadratic programme on the T × T Gram matrix
    (Lawson–Hanson active set), not an iterative approximation.

    Weighted rows: the rows are λₖ∇Lₖ, so λ scales each task's gradient before it is
    projected. Rows that are exactly zero (λₖ = 0, or a task without shared parameters or
    without a graph this step) are left out (α = 0; the default preference is 1/T over the
    other rows), so the step is the step on the other tasks.

    Args:
        pref: the preference p, one non-negative value per task (default 1/T each).
        reg_eps: ε added to the diagonal of the trace-normalised Gram matrix G/tr(G) before
            the solve (TorchJD's default 1e-4), which keeps the problem strictly convex when
            the gradients are linearly dependent; 0 solves the exact problem.
        max_iters: active-set iterations per projection (default 100; T + 1 suffice in
            exact arithmetic). Without convergence a warning is logged once and the last
            feasible iterate is used.

    Differences to the official code (TorchJD): the same maths and the same regularisation;
    the quadratic programmes are solved here by an active-set method in PyTorch rather than
    by quadprog, and a Gram matrix with zero trace gives α = p (TorchJD's normalisation
    gives a zero matrix and the same α).

    >>> import torch
    >>> UPGrad(reg_eps=0.0).combine(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    tensor([0.2500, 0.7500])
    """

    facts = aggregation_facts(
        "upgrad", "UPGrad", "Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024",
        options=("pref", "reg_eps", "max_iters"),
    )

    def __init__(self, pref: Sequence[float] | None = None, reg_eps: float = 1e-4, max_iters: int = 100) -> None:
        super().__init__()
        if reg_eps < 0:
            raise ValueError(f"UPGrad's reg_eps must be >= 0, got {reg_eps}")
        if max_iters < 1:
            raise ValueError(f"UPGrad's max_iters must be >= 1, got {max_iters}")
        self.pref = checked_preference("UPGrad", pref)
        self.reg_eps = float(reg_eps)
        self.max_iters = max_iters
        self._warned: set[str] = set()

    def row_weights(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        full = gramian(jacobian)
        active = nonzero_rows(full)
        num = int(active.sum())
        pref = preference("UPGrad", self.pref, len(full), 1.0 / max(num, 1))[active]
        gram = normalized_gram(full[active][:, active], self.reg_eps)
        alpha = torch.zeros(num, dtype=torch.float64)
        for i in range(num):
            unit = torch.zeros(num, dtype=torch.float64)
            unit[i] = pref[i]
            v, converged = dual_cone_weights(gram, unit, self.max_iters)
            if not converged:
                warn_once(self._warned, f"UPGrad: a projection did not converge in max_iters={self.max_iters}")
            alpha += v
        weights = torch.zeros(len(full), dtype=torch.float64)
        weights[active] = alpha
        return weights
