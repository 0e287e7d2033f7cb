"""MGDA: the min-norm point of the convex hull of the task gradients (Sener & Koltun, 2018)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._solvers import (
    check_jacobian,
    combine_rows,
    frank_wolfe_weights,
    gramian,
    min_norm_weights,
    nonzero_rows,
    solver_tolerance,
    warn_once,
)
from dynamtl.aggregation.base import GradientAggregation, weighting_backward
from dynamtl.context import StepContext
from dynamtl.facts import aggregation_facts

Solver = Literal["exact", "frank-wolfe"]
Normalize = Literal["none", "l2"]


class MGDA(GradientAggregation):
    r"""Multiple-Gradient Descent: the shortest vector of the convex hull of the task gradients.

    .. math::

        \alpha^* = \arg\min_{\alpha \in \Delta^{T}} \Big\lVert \sum_i \alpha_i g_i \Big\rVert^2,
        \qquad d = \sum_i \alpha_i^* g_i .

    d is a common descent direction (gᵢ·d ≥ ‖d‖² for every i) and d = 0 exactly at a
    Pareto-stationary point. From *Multi-Task Learning as Multi-Objective Optimization*
    (Sener & Koltun, NeurIPS 2018), after Désidéri's MGDA (2012). The problem lives on the
    T × T Gram matrix:

    * ``solver="exact"`` (default): Wolfe's min-norm-point algorithm (1976), exact in
      finitely many steps;
    * ``solver="frank-wolfe"``: the paper's Algorithm 2 (Frank-Wolfe from α = 1/T with the
      exact line search of its Algorithm 1), stopped when the step falls below ``tol`` or
      after ``max_iters`` iterations.

    Weighted rows: the rows are λₖ ∇Lₖ, so the hull, and with it α*, depends on λ (a task
    with a small λ has a short row and pulls d towards it). Rows that are exactly zero
    (λₖ = 0, or a task without shared parameters) are left out of the hull: a task switched
    off does not stop the others; if all rows are zero, d = 0.

    Args:
        solver: ``"exact"`` or ``"frank-wolfe"``.
        normalize: the paper's gradient normalisation before the solve: ``"none"`` (default)
            or ``"l2"`` (α is computed for the unit rows gᵢ/‖gᵢ‖). As in the official code,
            α is then applied to the rows *as given*, so with ``"l2"`` d is not the min-norm
            point of the given rows. The official code's loss-based normalisations (by Lᵢ,
            or Lᵢ‖gᵢ‖) need the losses, which an aggregation does not see: put them in λ with
            a weighting instead.
        tol: for ``"exact"``, the optimality tolerance relative to the largest ‖gᵢ‖²
            (default: 10 machine epsilons of the dtype the Gram matrix is computed in,
            float64 for float64 rows and float32 for all others); for ``"frank-wolfe"``, the
            step size γ below which it stops (default 1e-5).
        max_iters: iterations of the solver (major cycles for ``"exact"``; default 250).

    A solver that does not converge within ``max_iters`` logs a warning (once) and returns
    its last iterate, a point of the convex hull.

        upper_bound: the paper's MGDA-UB: α* is computed from the gradients of the shared
            *representation* Z (rows λₖ∇_Z Lₖ, one cheap backward pass per task through the
            heads only) instead of the shared parameters, and the step is then a single
            backward pass of Σₖ α*ₖ λₖ Lₖ. It minimises an upper bound of the MGDA objective,
            so its α* differs from the exact one; task heads then get α*ₖλₖ∇Lₖ (as in the
            paper's code) instead of λₖ∇Lₖ. Needs ``MultiTask(..., representation="NAME")``.

    Differences to the paper: the official code initialises Frank-Wolfe with the best pair of gradients; this one
    starts from α = 1/T as Algorithm 2 does.

    >>> import torch
    >>> MGDA().combine(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    tensor([1., 1.])
    """

    facts = aggregation_facts(
        "mgda", "MGDA", "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018",
        options=("solver", "normalize", "tol", "max_iters", "upper_bound"),
        extra_backward="T−1 (upper_bound: T through the heads only)",
    )

    option_ranges = intervals(tol="(0, inf)", max_iters="[1, inf)")

    def __init__(
        self,
        solver: Solver = "exact",
        normalize: Normalize = "none",
        tol: float | None = None,
        max_iters: int = 250,
        upper_bound: bool = False,
    ) -> None:
        super().__init__()
        self.solver = solver
        self.normalize = normalize
        self.tol = tol
        self.max_iters = max_iters
        self.upper_bound = upper_bound
        self._warned: set[str] = set()

    @property
    def needs_representation(self) -> bool:  # type: ignore[override]
        return self.upper_bound

    def backward(self, ctx: StepContext, weights: Tensor, regularizer: Tensor | None) -> None:
        if not self.upper_bound:
            super().backward(ctx, weights, regularizer)
            return
        w = weights.detach()
        rows = w[:, None] * ctx.representation_gradients()
        # Under DDP the rows hold this process's samples: the global batch's Gram matrix is
        # the sum of the processes' ones (over R²), and α* does not change with its scale.
        gram = ctx.objective.replicas.mean(gramian(rows).to(rows.device))
        ctx.objective.precision.check([gram])
        alpha = self.gram_weights(gram, solver_tolerance(rows))
        self.last_weights = alpha.to(w)
        # the graph is kept so that a non-finite gradient can be traced to its task (check_finite)
        ctx.objective.precision.backward((alpha.to(w) * w * ctx.losses).sum(), retain_graph=ctx.objective.check_finite)
        weighting_backward(ctx, weights, regularizer)

    def combine(self, jacobian: Tensor) -> Tensor:
        return combine_rows(self.row_weights(jacobian), jacobian)

    def row_weights(self, jacobian: Tensor) -> Tensor:
        """α* on the simplex (zero for all-zero rows) such that d = Σₖ α*ₖ Jₖ."""
        check_jacobian(type(self).__name__, jacobian)
        return self.gram_weights(gramian(jacobian), solver_tolerance(jacobian))

    def gram_weights(self, gram: Tensor, default_tol: float) -> Tensor:
        """α* (float64, on the CPU) from the Gram matrix ``gram`` of the rows; ``default_tol``:
        the exact solver's tolerance when ``tol`` is not given."""
        gram = gram.to(dtype=torch.float64, device="cpu")
        active = nonzero_rows(gram)
        weights = torch.zeros(len(gram), dtype=torch.float64)
        if not active.any():
            return weights
        sub = gram[active][:, active]
        if self.normalize == "l2":
            norms = sub.diagonal().sqrt()
            sub = sub / torch.outer(norms, norms)
        if self.solver == "exact":
            tol = default_tol if self.tol is None else self.tol
            alpha, converged = min_norm_weights(sub, tol, self.max_iters)
        else:
            alpha, converged = frank_wolfe_weights(sub, 1e-5 if self.tol is None else self.tol, self.max_iters)
        if not converged:
            warn_once(
                self._warned,
                f"MGDA: the {self.solver} solver did not converge in max_iters={self.max_iters}; "
                "its last iterate is used",
            )
        weights[active] = alpha
        return weights
