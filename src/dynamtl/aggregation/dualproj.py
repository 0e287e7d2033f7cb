"""DualProj: the mean gradient projected onto the dual cone of the task gradients (Quinton & Rey, 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dynamtl.aggregation._dual_cone import checked_preference, dual_cone_weights, normalized_gram, preference
from dynamtl.aggregation._solvers import check_jacobian, gramian, nonzero_rows, warn_once
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class DualProj(GradientAggregation):
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
        pref: the preference p, one non-negative value per task (default 1/T each).
        reg_eps: ε added to the diagonal of the trace-normalised Gram matrix (TorchJD's
            default 1e-4); 0 solves the exact problem.
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

    def __init__(self, pref: Sequence[float] | None = None, reg_eps: float = 1e-4, max_iters: int = 100) -> None:
        super().__init__()
        if reg_eps < 0:
            raise ValueError(f"DualProj's reg_eps must be >= 0, got {reg_eps}")
        if max_iters < 1:
            raise ValueError(f"DualProj's max_iters must be >= 1, got {max_iters}")
        self.pref = checked_preference("DualProj", pref)
        self.reg_eps = float(reg_eps)
        self.max_iters = max_iters
        self._warned: set[str] = set()

    def row_weights(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        full = gramian(jacobian)
        active = nonzero_rows(full)
        pref = preference("DualProj", self.pref, len(full), 1.0 / max(int(active.sum()), 1))[active]
        alpha, converged = dual_cone_weights(normalized_gram(full[active][:, active], self.reg_eps), pref, self.max_iters)
        if not converged:
            warn_once(self._warned, f"DualProj: the projection did not converge in max_iters={self.max_iters}")
        weights = torch.zeros(len(full), dtype=torch.float64)
        weights[active] = alpha
        return weights
