"""UPGrad: the mean of the task gradients each projected onto the dual cone (Quinton & Rey, 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from dynamtl.aggregation._dual_cone import DualConeAggregation
from dynamtl.facts import aggregation_facts


class UPGrad(DualConeAggregation):
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
        pref: the preference p, one non-negative value per task (default 1/T each). Its
            scale matters (α grows with it: ``[1, 1]`` gives twice the default step), so
            each value is 0 or between 1e-30 and 1e30.
        reg_eps: ε added to the diagonal of the trace-normalised Gram matrix G/tr(G) before
            the solve (TorchJD's default 1e-4), which keeps the problem strictly convex when
            the gradients are linearly dependent; 0 solves the exact problem. With ε > 0 the
            update is conflict-free only up to the regularisation: (Jd)ᵢ ≥ −ε·tr(G)·αᵢ
            (cosines down to about −0.005 for nearly opposite gradients); 0 gives Jd ≥ 0.
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

    def active_weights(self, gram: Tensor, pref: Tensor) -> Tensor:
        alpha = torch.zeros(len(gram), dtype=torch.float64)
        for i in range(len(gram)):
            unit = torch.zeros(len(gram), dtype=torch.float64)
            unit[i] = pref[i]
            alpha += self.project(gram, unit)
        return alpha
