"""Projection onto the dual cone of the task gradients, on the Gram matrix (UPGrad, DualProj).

For a Jacobian J with rows gᵢ and Gram matrix G = JJᵀ, the projection of Jᵀu onto the dual
cone {x : Jx ≥ 0} (the directions that conflict with no task) is Jᵀv with

.. math::

    v = \\arg\\min_{v \\ge u} v^\\top G v

(Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*, 2024, Proposition 1).
Writing v = u + s, s ≥ 0, this is a convex quadratic programme over the non-negative
orthant, solved exactly here by the Lawson–Hanson active-set method written on G (the
problem's size is T, the number of tasks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._solvers import check_jacobian, gramian, nonzero_rows, numbers, warn_once
from dynamtl.aggregation.base import GradientAggregation


def dual_cone_weights(gram: Tensor, u: Tensor, max_iters: int) -> tuple[Tensor, bool]:
    """``(v, converged)``: v = argmin_{v ≥ u} vᵀGv for a float64 PSD ``gram`` ([T, T]).

    Optimality (KKT): Gv ≥ 0, v ≥ u and (Gv)ᵢ(vᵢ − uᵢ) = 0 for every i. Lawson–Hanson on
    s = v − u: a free set P of coordinates with sᵢ > 0 grows by the coordinate whose
    multiplier −(Gv)ᵢ is most positive, the problem restricted to P is solved in the least-
    squares sense (G restricted to P may be singular), and the iterate moves back to the
    feasible region when a coordinate would turn negative. It ends when every (Gv)ᵢ ≥ −tol
    off P; after ``max_iters`` outer steps it returns its last (feasible) iterate with
    ``converged=False``.
    """
    num = len(gram)
    if num == 0:
        return u.clone(), True
    scale = max(float(gram.diagonal().max()), 0.0) * max(float(u.abs().max()), 1e-300)
    tol = 1e-12 * scale
    s = torch.zeros(num, dtype=torch.float64)
    free = torch.zeros(num, dtype=torch.bool)
    q = gram @ u
    for _ in range(max_iters):
        multipliers = -(gram @ s + q)
        candidates = (~free) & (multipliers > tol)
        if not candidates.any():
            return u + s, True
        entering = int(torch.where(candidates, multipliers, -torch.inf).argmax())
        free[entering] = True
        for _ in range(num + 1):
            index = free.nonzero().squeeze(1)
            z = torch.zeros(num, dtype=torch.float64)
            sub = gram[index][:, index]
            z[index] = torch.linalg.lstsq(sub, -q[index], rcond=1e-13, driver="gelsd").solution
            if bool((z[index] > 0.0).all()):
                s = z
                break
            leaving = free & (z <= 0.0)
            gaps = s[leaving] - z[leaving]
            ratios = torch.where(gaps > 0.0, s[leaving] / gaps, torch.zeros_like(gaps))
            s = s + float(ratios.min()) * (z - s)
            free &= s > 0.0
            s = torch.where(free, s, torch.zeros_like(s))
            if not free.any():
                break
        if not bool(free[entering]):  # it could not enter: its multiplier was rounding
            return u + s, True
    return u + s, False


def normalized_gram(gram: Tensor, reg_eps: float) -> Tensor:
    """G divided by its trace (the solution v does not depend on G's scale), plus
    ``reg_eps`` times the identity; all zero when the trace is 0."""
    trace = float(gram.trace())
    normalized = gram / trace if trace > 0.0 else torch.zeros_like(gram)
    return normalized + reg_eps * torch.eye(len(gram), dtype=gram.dtype)


def preference(owner: str, pref: Tensor | None, num_tasks: int, default: float) -> Tensor:
    """The preference vector (float64): ``pref`` checked against the number of rows, or
    ``default`` for every task."""
    if pref is None:
        return torch.full((num_tasks,), default, dtype=torch.float64)
    if pref.numel() != num_tasks:
        raise ValueError(
            f"{owner} has {pref.numel()} preference values but the Jacobian has {num_tasks} rows (tasks): "
            "give one value per task, in task order"
        )
    return pref.double().cpu()


def checked_preference(pref: Sequence[float] | Tensor | None) -> Tensor | None:
    """``pref`` as a float64 tensor (its values checked on construction: finite, ≥ 0, not
    all 0; see ``option_ranges`` and ``weight_options``)."""
    return None if pref is None else torch.as_tensor(numbers(pref), dtype=torch.float64)


class DualConeAggregation(GradientAggregation):
    """What UPGrad and DualProj share: a preference, the regularisation of the Gram matrix,
    the solver's budget, and leaving zero rows out (see their docstrings)."""

    option_ranges = intervals(pref="[0, inf)", reg_eps="[0, inf)", max_iters="[1, inf)")
    weight_options = ("pref",)

    def __init__(self, pref: Sequence[float] | None = None, reg_eps: float = 1e-4, max_iters: int = 100) -> None:
        super().__init__()
        self.pref = checked_preference(pref)
        self.reg_eps = float(reg_eps)
        self.max_iters = max_iters
        self._warned: set[str] = set()

    def row_weights(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        full = gramian(jacobian)
        active = nonzero_rows(full)
        pref = preference(type(self).__name__, self.pref, len(full), 1.0 / max(int(active.sum()), 1))[active]
        weights = torch.zeros(len(full), dtype=torch.float64)
        weights[active] = self.active_weights(normalized_gram(full[active][:, active], self.reg_eps), pref)
        return weights

    def active_weights(self, gram: Tensor, pref: Tensor) -> Tensor:
        """The weights of the non-zero rows, from their normalised Gram matrix and preference."""
        raise NotImplementedError

    def project(self, gram: Tensor, u: Tensor) -> Tensor:
        """v = argmin_{v ≥ u} vᵀGv, with a warning (once) if the solver did not converge."""
        v, converged = dual_cone_weights(gram, u, self.max_iters)
        if not converged:
            message = f"{type(self).__name__}: a projection did not converge in max_iters={self.max_iters}"
            warn_once(self._warned, message)
        return v
