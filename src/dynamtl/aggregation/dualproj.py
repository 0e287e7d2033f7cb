"""DualProj: the mean gradient projected onto the dual cone of the task gradients (Quinton & Rey, 2024)."""

from __future__ import annotations

from torch import Tensor

from dynamtl.aggregation._dual_cone import DualConeAggregation
from dynamtl.facts import aggregation_facts


class DualProj(DualConeAggregation):
    r"""The p-weighted sum of the task gradients, projected onto their dual cone.

    .. math::

        d = \pi_J(J^\top p) = J^\top \alpha, \qquad \alpha = \arg\min_{v \ge p} v^\top G v ,

    with G = JJᵀ and the preference p (default pᵢ = 1/T, the mean gradient): the closest
    direction to the mean that conflicts with no task (Jd = Gα ≥ 0). If the mean conflicts
    with no task, d is the mean. From *Jacobian Descent for Multi-Objective Optimization*
    (Quinton & Rey, 2024), where it is the baseline of UPGrad (:class:`UPGrad` projects
    every gradient before averaging). The quadratic programme on the T × T Gram matrix is
    solved exactly (Lawson–Hanson active set).

    Weighted rows: the rows are λₖ∇Lₖ, so λ weighs the mean that is projected. Rows that are
    exactly zero (λₖ = 0, or a task without shared parameters or without a graph this step)
    are left out (α = 0; the default preference is 1/T over the other rows).

    Args:
        pref: the preference p, one non-negative value per task (default 1/T each). Its
            scale matters (α grows with it: ``[1, 1]`` gives twice the default step), so
            each value is 0 or between 1e-30 and 1e30.
        reg_eps: ε added to the diagonal of the trace-normalised Gram matrix (TorchJD's
            default 1e-4); 0 solves the exact problem. With ε > 0 the update is
            conflict-free only up to the regularisation, (Jd)ᵢ ≥ −ε·tr(G)·αᵢ; 0 gives Jd ≥ 0.
        max_iters: active-set iterations (default 100). Without convergence a warning is
            logged once and the last feasible iterate is used.

    Differences to the official code (TorchJD): the same maths and regularisation, solved by
    an active-set method in PyTorch instead of quadprog.

    >>> import torch
    >>> DualProj(reg_eps=0.0).combine(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    tensor([0.0000, 0.5000])
    """

    facts = aggregation_facts(
        "dualproj", "DualProj", "Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024",
        options=("pref", "reg_eps", "max_iters"),
    )

    def active_weights(self, gram: Tensor, pref: Tensor) -> Tensor:
        return self.project(gram, pref)
