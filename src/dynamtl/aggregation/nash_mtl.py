"""Nash-MTL: the Nash bargaining solution of the tasks (Navon et al., 2022)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._solvers import (
    bargaining_weights,
    check_jacobian,
    combine_rows,
    gramian,
    nonzero_rows,
    warn_once,
)
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class NashMTL(GradientAggregation):
    r"""Multi-task learning as a bargaining game: the Nash bargaining solution of the tasks.

    The update d = Σᵢ αᵢ gᵢ maximises Σᵢ log(gᵢ·d) in a ball; the solution is given by
    α > 0 with

    .. math::

        (G \alpha)_i = \frac{1}{\alpha_i} \quad \text{for every } i, \qquad G = [g_i \cdot g_j],

    so that every task's rate gᵢ·d = 1/αᵢ is inversely proportional to its weight. From
    *Multi-Task Learning as a Bargaining Game* (Navon, Shamsian, Achituve, Maron,
    Kawaguchi, Chechik, Fetaya, ICML 2022). α is the unique minimiser of the strictly convex
    ½ αᵀGα − Σᵢ log αᵢ, found here by damped Newton steps on the Gram matrix (normalised by
    its mean diagonal; no SciPy needed), warm-started from the previous step's α, which is
    kept in the state dict. It stops when maxᵢ |αᵢ(Gα)ᵢ − 1| ≤ ``tol``.

    A solution exists unless 0 lies in the convex hull of the task gradients (a
    Pareto-stationary point). When Newton does not converge a warning is logged (once) and
    αᵢ = 1/‖gᵢ‖ is used, the exact solution for orthogonal gradients (d is then the sum of
    the unit task gradients).

    Weighted rows: the rows are λₖ ∇Lₖ; scaling row k by λₖ > 0 divides its αₖ by λₖ and
    leaves d unchanged, so Nash-MTL is invariant to the weights except for tasks switched
    off: rows that are exactly zero (λₖ = 0, or no shared parameter) get α = 0 and the
    others bargain among themselves.

    Args:
        update_every: solve for α every this many calls and reuse the last α in between
            (the paper's cheaper variant; default 1, every call).
        max_norm: if given, d is scaled down to this norm when longer. The paper's
            algorithm does not clip (default ``None``); TorchJD's adaptation of the official
            code clips at 1 by default.
        tol: tolerance on maxᵢ |αᵢ(Gα)ᵢ − 1| (default 1e-6; one below 100 float64 ε is taken
            as 100 ε, the rounding floor of that residual).
        max_iters: Newton iterations (default 100).

    Differences to the official code: it solves a sequence of convex programs with cvxpy
    (at most 20, tolerance 1e-3) that approximate the same α; here Newton's method solves
    the condition itself to ``tol``.

    >>> import torch
    >>> NashMTL().combine(torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
    tensor([1., 1.])
    """

    facts = aggregation_facts(
        "nash-mtl", "Nash-MTL", "Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022",
        options=("update_every", "max_norm", "tol", "max_iters"),
    )

    option_ranges = intervals(update_every="[1, inf)", max_norm="(0, inf)", tol="(0, inf)", max_iters="[1, inf)")

    def __init__(
        self,
        update_every: int = 1,
        max_norm: float | None = None,
        tol: float = 1e-6,
        max_iters: int = 100,
    ) -> None:
        super().__init__()
        self.update_every = update_every
        self.max_norm = max_norm
        self.tol = tol
        self.max_iters = max_iters
        self.alpha: Tensor | None = None
        self.calls = 0
        self._warned: set[str] = set()

    def combine(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        due = self.calls % self.update_every == 0
        previous = self.alpha
        if not due and previous is not None and len(previous) == jacobian.shape[0]:
            alpha = previous
        else:
            alpha = self._solve(gramian(jacobian))
        self.alpha = alpha
        self.calls += 1
        d = combine_rows(alpha, jacobian)
        if self.max_norm is not None:
            norm = float(d.norm())
            if norm > self.max_norm:
                d = d * (self.max_norm / norm)
        return d

    def _solve(self, gram: Tensor) -> Tensor:
        active = nonzero_rows(gram)
        alpha = torch.zeros(len(gram), dtype=torch.float64)
        if not active.any():
            return alpha
        sub = gram[active][:, active]
        scale = float(sub.diagonal().mean())
        sub = sub / scale
        diagonal = 1.0 / sub.diagonal().sqrt()
        start = diagonal
        if self.alpha is not None and len(self.alpha) == len(gram) and bool((self.alpha[active] > 0).all()):
            start = self.alpha[active] * math.sqrt(scale)
        solution, converged = bargaining_weights(sub, start, self.tol, self.max_iters)
        if not converged:
            warn_once(
                self._warned,
                "NashMTL: Newton's method did not solve G·alpha = 1/alpha (is 0 in the convex hull of "
                "the gradients?); alpha_i = 1/|g_i| is used instead",
            )
            solution = diagonal
        alpha[active] = solution / math.sqrt(scale)
        return alpha

    def get_extra_state(self) -> dict[str, Any]:
        alpha = None if self.alpha is None else self.alpha.clone()
        return {"alpha": alpha, "calls": self.calls}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        alpha = state["alpha"]
        self.alpha = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float64, device="cpu").clone()
        self.calls = int(state["calls"])
