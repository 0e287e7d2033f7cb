"""Shared numerics of the gradient aggregations.

The Gram matrix of the task gradients and the solvers that work on it (min-norm point of
a simplex, CAGrad's dual, Nash-MTL's bargaining equation), all on float64 tensors on the
CPU (the matrices are T × T); seeded random streams whose state goes into a state dict; the
lazy import of the optional SciPy; warnings logged once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

LOGGER = logging.getLogger("dynamtl")


def check_jacobian(owner: str, jacobian: Tensor) -> None:
    """``ValueError`` unless ``jacobian`` is a non-empty matrix ``[T, D]``."""
    if jacobian.dim() != 2 or jacobian.shape[0] == 0:
        raise ValueError(
            f"{owner}.combine expects the task gradients as a matrix [T, D] with one row per task, "
            f"got shape {list(jacobian.shape)}: stack the flattened gradients with torch.stack"
        )


def check_other_batches(owner: str, jacobian: Tensor, others: Sequence[Tensor], count: int) -> None:
    """``ValueError`` unless ``others`` holds ``count`` matrices of ``jacobian``'s shape: the
    rows of the extra mini-batches of a step."""
    check_jacobian(owner, jacobian)
    if len(others) != count or any(o.shape != jacobian.shape for o in others):
        shapes = [list(o.shape) for o in others]
        raise ValueError(
            f"{owner} needs the task gradients of {count} extra mini-batches, each of shape {list(jacobian.shape)} "
            f"like this batch's, got shapes {shapes}: give MultiTask.step(batch, extra_batches=[...]) "
            f"{count} more batches"
        )


def row_scales(jacobian: Tensor) -> Tensor:
    """The largest |entry| of every row (1 for an all-zero row), float64 on the CPU.

    Dividing every row by its scale before any product keeps Gram entries and combinations
    of rows clear of underflow and overflow in float32, bfloat16 and float16 (a row of norm
    1e-25 has a squared norm of 1e-50, below float32's range)."""
    scales = jacobian.detach().abs().amax(dim=1).double().cpu()
    return torch.where(scales > 0, scales, 1.0)


def row_norms(jacobian: Tensor) -> Tensor:
    """The Euclidean norm of every row (float64, CPU), computed on the rows divided by their
    :func:`row_scales` (no underflow or overflow in any dtype)."""
    scales = row_scales(jacobian)
    j = jacobian.detach().to(compute_dtype(jacobian))
    return (j / scales.to(j)[:, None]).norm(dim=1).cpu().double() * scales


def nonzero_jacobian_rows(jacobian: Tensor) -> Tensor:
    """Mask (CPU) of the rows of ``jacobian`` that are not all zero."""
    return jacobian.detach().abs().amax(dim=1).cpu() > 0


def compute_dtype(jacobian: Tensor) -> torch.dtype:
    """float64 for a float64 Jacobian, float32 for every other (float32, bfloat16, float16)."""
    return torch.float64 if jacobian.dtype == torch.float64 else torch.float32


def gramian(jacobian: Tensor) -> Tensor:
    """The Gram matrix ``J Jᵀ`` as a symmetric float64 tensor on the CPU.

    The products are taken on the rows divided by their :func:`row_scales`, in float32 (or
    float64 for a float64 Jacobian), and the scales multiplied back in float64: no entry
    underflows or overflows whatever the dtype and the size of the rows."""
    scales = row_scales(jacobian)
    j = jacobian.detach().to(compute_dtype(jacobian))
    unit = j / scales.to(j)[:, None]
    gram = (unit @ unit.T).cpu().double() * torch.outer(scales, scales)
    return 0.5 * (gram + gram.T)


def cross_gramian(first: Tensor, second: Tensor) -> Tensor:
    """The matrix ``[fᵢ·sⱼ]`` of the rows of two Jacobians of the same shape ``[T, D]``
    (float64, CPU; not symmetric), formed on the rows divided by their :func:`row_scales`
    as :func:`gramian` does. ``cross_gramian(J, J)`` is ``gramian(J)`` up to symmetrisation."""
    a_scales, b_scales = row_scales(first), row_scales(second)
    dtype = torch.promote_types(compute_dtype(first), compute_dtype(second))
    a = first.detach().to(dtype) / a_scales.to(device=first.device, dtype=dtype)[:, None]
    b = second.detach().to(device=first.device, dtype=dtype) / b_scales.to(device=first.device, dtype=dtype)[:, None]
    return (a @ b.T).cpu().double() * torch.outer(a_scales, b_scales)


def scale_normalized(matrix: Tensor) -> Tensor:
    """``matrix`` (T × T, a Gram or cross-Gram matrix) divided by s², s the mean over its
    diagonal of √max(Aᵢᵢ, 0): the normalisation of SDMGrad's official code, which makes
    step sizes on the task weights independent of the gradients' scale (unchanged when s = 0)."""
    scale = float(matrix.diagonal().clamp_min(0.0).sqrt().mean())
    return matrix / scale**2 if scale > 0 else matrix


def double_sampled_gramian(
    owner: str, jacobian: Tensor, others: Sequence[Tensor], normalize: bool
) -> tuple[Tensor, Tensor]:
    """``(present, A)`` for a double-sampling method: the mask of the rows of ``jacobian``
    (this batch) that are not zero, and the cross-Gram matrix A = G₁G₂ᵀ of the two extra
    batches' rows ``others`` restricted to them (:func:`scale_normalized` with ``normalize``)."""
    check_other_batches(owner, jacobian, others, 2)
    present = nonzero_jacobian_rows(jacobian)
    cross = cross_gramian(others[0], others[1])[present][:, present]
    return present, scale_normalized(cross) if normalize else cross


def project_simplex(values: Tensor) -> Tensor:
    """The Euclidean projection of ``values`` (a vector) onto the probability simplex
    {w ≥ 0, Σw = 1}, by the sorting rule of Held, Wolfe & Crowder (1974): w = max(v − τ, 0)
    with the threshold τ that makes the entries sum to 1.

    The projection does not change when a constant is added to every entry, so v is first
    shifted by its maximum: a step of size 1e59 (raw steps on gradients of size 1e30) would
    otherwise lose the 1 of Σw = 1 in rounding and divide by zero. Infinite entries are the
    limit of an unbounded step: the entries at +∞ share the mass (else those at −∞ get none)."""
    if not bool(values.isfinite().all()):
        if bool(values.isnan().any()):
            raise ValueError(f"project_simplex got NaN in {values.tolist()}: the step that gave them overflowed")
        top = values == torch.inf
        if bool(top.any()):
            return top.to(values.dtype) / int(top.sum())
        finite = values.isfinite()
        if not bool(finite.any()):  # every entry at −∞: none is preferred
            return torch.full_like(values, 1.0 / len(values))
        out = torch.zeros_like(values)
        out[finite] = project_simplex(values[finite])
        return out
    values = values - values.max()
    ordered = values.sort(descending=True).values
    cumulative = ordered.cumsum(0) - 1.0
    ranks = torch.arange(1, len(values) + 1, dtype=values.dtype)
    count = int((ordered - cumulative / ranks > 0).sum())
    return (values - cumulative[count - 1] / count).clamp_min(0.0)


def simplex_step(weights: Tensor, present: Tensor, descend: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """One step of weights kept on the probability simplex, taken over the tasks ``present``
    in this step (a boolean mask): ``(new state, step weights)``.

    The present tasks' weights are renormalised to the simplex (uniform if they have no
    mass), moved by ``descend`` (which returns a point of the simplex), and used as this
    step's weights (0 for absent tasks); the state keeps the absent tasks' weights and gives
    the present ones their old total mass. With every task present this is ``descend`` of
    the weights, unchanged."""
    step = torch.zeros_like(weights)
    count = int(present.sum())
    if count == 0:
        return weights.clone(), step
    mass = float(weights[present].sum())
    start = weights[present] / mass if mass > 0 else torch.full((count,), 1.0 / count, dtype=weights.dtype)
    moved = descend(start)
    step[present] = moved
    state = weights.clone()
    if mass > 0:
        state[present] = moved * mass
    return state, step


def solver_tolerance(jacobian: Tensor) -> float:
    """Relative accuracy of the Gram matrix of ``jacobian`` (10 ε of the dtype it is computed in)."""
    return 10.0 * float(torch.finfo(compute_dtype(jacobian)).eps)


def rank_tolerance(jacobian: Tensor) -> float:
    """Relative size below which an eigenvalue of the Gram matrix counts as zero.

    Rounding the rows to ``jacobian``'s dtype (relative error ε) turns an exactly dependent
    row into one whose Gram eigenvalue is of order ε² times the largest: with bfloat16
    (ε = 2⁻⁸) that is far above the accuracy of the float32 products, so the tolerance is
    the larger of 10 ε² of the rows' dtype and :func:`solver_tolerance`."""
    eps = float(torch.finfo(jacobian.dtype).eps)
    return max(10.0 * eps * eps, solver_tolerance(jacobian))


def combine_rows(weights: Tensor | Sequence[float], jacobian: Tensor) -> Tensor:
    """Σₖ wₖ Jₖ, in ``jacobian``'s dtype and on its device.

    Formed as Σₖ (wₖ sₖ)(Jₖ/sₖ) with sₖ the :func:`row_scales`, in float32 (float64 for a
    float64 Jacobian): a huge weight on a tiny row (PCGrad projecting on an underflowing
    gradient) gives a moderate coefficient, and half-precision rows are summed in float32."""
    scales = row_scales(jacobian)
    coefficients = torch.as_tensor(weights, dtype=torch.float64).cpu() * scales
    j = jacobian.detach().to(compute_dtype(jacobian))
    unit = j / scales.to(j)[:, None]
    return (coefficients.to(unit) @ unit).to(jacobian.dtype)


def nonzero_rows(gram: Tensor) -> Tensor:
    """Mask of the rows with a non-zero gradient (tasks with λₖ = 0 or no shared parameter are not)."""
    return gram.diagonal() > 0.0


def numbers(value: float | Sequence[float] | Tensor) -> list[float]:
    """``value`` (its kind checked on construction: :func:`dynamtl._helpers.check_arguments`)
    as a list of floats: one number, or a list, tuple, 1-D tensor or 1-D NumPy array of them in
    task order."""
    if isinstance(value, Tensor):
        return [float(v) for v in value.reshape(-1).tolist()]
    if type(value).__module__ == "numpy" and getattr(value, "ndim", 0) == 1:  # a NumPy array
        return [float(v) for v in value.tolist()]  # type: ignore[union-attr]
    if isinstance(value, Sequence):
        return [float(v) for v in value]
    return [float(value)]  # one number: a Python or NumPy number


def per_task(owner: str, name: str, value: float | Sequence[float], num_tasks: int) -> Tensor:
    """``value`` as one float per task (a float64 tensor); ``ValueError`` if a sequence has the
    wrong length."""
    if isinstance(value, (int, float)):
        return torch.full((num_tasks,), float(value), dtype=torch.float64)
    values = torch.as_tensor(value, dtype=torch.float64)
    if values.shape != (num_tasks,):
        raise ValueError(
            f"{owner} has {values.numel()} values of {name} but the Jacobian has {num_tasks} rows (tasks): "
            f"give one value per task, in task order"
        )
    return values


def warn_once(warned: set[str], message: str) -> None:
    """Log ``message`` on the ``dynamtl`` logger, the first time only (``warned`` remembers)."""
    if message not in warned:
        warned.add(message)
        LOGGER.warning(message)


def import_scipy_optimize(owner: str) -> ModuleType:
    """``scipy.optimize``, or an ``ImportError`` that names the extra to install."""
    try:
        from scipy import optimize
    except ImportError as error:
        raise ImportError(f"{owner} needs SciPy for its solver: pip install 'dynamtl[solvers]'") from error
    return optimize


class SeededGenerator:
    """A :class:`torch.Generator` seeded with ``seed``, created on the device of its first use.

    :meth:`state` and :meth:`load` carry its state through a state dict, so a reloaded
    aggregation draws exactly what the saved one would have drawn next. Asked for on
    another device than the one it lives on (the model was moved), it restarts from the seed
    there.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._generator: torch.Generator | None = None
        self._loaded: dict[str, Any] | None = None

    def on(self, device: torch.device) -> torch.Generator:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self._generator is not None and self._generator.device == device:
            return self._generator
        generator = torch.Generator(device=device)
        if self._loaded is not None and self._loaded["device"] == str(device):
            generator.set_state(self._loaded["state"])
        else:
            generator.manual_seed(self.seed)
        self._generator, self._loaded = generator, None
        return generator

    def state(self) -> dict[str, Any] | None:
        if self._generator is None:
            return self._loaded
        return {"device": str(self._generator.device), "state": self._generator.get_state()}

    def load(self, state: dict[str, Any] | None) -> None:
        self._generator, self._loaded = None, state


def random_orders(generator: SeededGenerator, num_tasks: int) -> list[list[int]]:
    """For every task i, the other tasks j ≠ i in a uniformly random order (one draw per call)."""
    keys = torch.rand((num_tasks, num_tasks), generator=generator.on(torch.device("cpu")), dtype=torch.float64)
    return [[j for j in row if j != i] for i, row in enumerate(keys.argsort(dim=1).tolist())]


def _affine_min_norm(gram: Tensor) -> Tensor:
    """Weights v (Σv = 1) of the min-norm point of the affine hull: G v = μ 1, 1ᵀv = 1."""
    n = len(gram)
    kkt = torch.zeros((n + 1, n + 1), dtype=torch.float64)
    kkt[:n, :n] = gram
    kkt[:n, n] = -1.0
    kkt[n, :n] = 1.0
    rhs = torch.zeros(n + 1, dtype=torch.float64)
    rhs[n] = 1.0
    try:
        solution = torch.linalg.solve(kkt, rhs)
    except torch.linalg.LinAlgError:
        solution = torch.linalg.lstsq(kkt, rhs, driver="gelsd").solution
    return solution[:n]


def min_norm_weights(gram: Tensor, tol: float, max_iters: int) -> tuple[Tensor, bool]:
    """Weights α on the simplex of the min-norm point of conv{g₁…g_T}, from G = [gᵢ·gⱼ].

    Wolfe's exact algorithm (*Finding the nearest point in a polytope*, Wolfe, 1976): grow
    a set of corrals whose affine min-norm point lies inside their hull; it stops when no
    vertex gᵢ has gᵢ·x < ‖x‖² − tol (the optimality condition of the min-norm point x),
    which it reaches in finitely many steps. Returns ``(α, converged)``; without
    convergence in ``max_iters`` major cycles α is the last (feasible) iterate.
    """
    num = len(gram)
    scale = float(gram.diagonal().max())
    if scale <= 0.0:
        return torch.full((num,), 1.0 / num, dtype=torch.float64), True
    g = gram / scale
    first = int(g.diagonal().argmin())
    support = [first]
    alpha = torch.zeros(num, dtype=torch.float64)
    alpha[first] = 1.0
    for _ in range(max_iters):
        products = g @ alpha
        j = int(products.argmin())
        if float(products[j]) >= float(alpha @ products) - tol or j in support:
            return alpha, True
        support.append(j)
        while True:
            index = torch.tensor(support)
            v = _affine_min_norm(g[index][:, index])
            if bool((v > 0.0).all()):
                alpha.zero_()
                alpha[index] = v
                break
            current = alpha[index]
            outside = (v <= 0.0).nonzero().squeeze(1)
            gaps = current[outside] - v[outside]
            ratios = torch.where(gaps > 0.0, current[outside] / gaps, 0.0)
            current = current + float(ratios.min()) * (v - current)
            current[outside[int(ratios.argmin())]] = 0.0
            keep = current > 0.0
            support = index[keep].tolist()
            alpha.zero_()
            alpha[index[keep]] = current[keep]
            if j not in support:  # only by rounding: the new vertex cannot shorten x
                return alpha, True
    return alpha, False


def frank_wolfe_weights(gram: Tensor, tol: float, max_iters: int) -> tuple[Tensor, bool]:
    """Algorithm 2 of Sener & Koltun (2018): Frank-Wolfe on the simplex from α = 1/T.

    Each iteration moves α towards the vertex eₜ with the smallest gₜ·x, with the exact
    line search of their Algorithm 1 (min-norm point of a segment), and stops once the step
    γ falls below ``tol`` or α already is the vertex the step moves to (a solution on a
    vertex: one task, identical rows, a row that is the min-norm point). Returns
    ``(α, converged)``.
    """
    num = len(gram)
    alpha = torch.full((num,), 1.0 / num, dtype=torch.float64)
    for _ in range(max_iters):
        products = gram @ alpha
        t = int(products.argmin())
        x_g, x_x, g_g = float(products[t]), float(alpha @ products), float(gram[t, t])
        if g_g <= x_g:
            gamma = 1.0
        elif x_x <= x_g:
            gamma = 0.0
        else:
            gamma = (x_x - x_g) / (x_x + g_g - 2.0 * x_g)
        at_vertex = float(alpha[t]) == 1.0  # α is already eₜ: the step cannot move it
        alpha *= 1.0 - gamma
        alpha[t] += gamma
        if gamma < tol or at_vertex:
            return alpha, True
    return alpha, False


def cagrad_weights(gram: Tensor, c: float, owner: str) -> tuple[Tensor, bool]:
    """Weights (on the rows) of CAGrad's direction d, the solution of
    max_d minᵢ gᵢ·d s.t. ‖d − g₀‖ ≤ c‖g₀‖ (g₀ the mean of the rows).

    Through the dual: w minimises F(w) = g_wᵀg₀ + c‖g₀‖ ‖g_w‖ over the simplex (g_w = Σ wᵢ gᵢ),
    solved with SciPy's SLSQP on the trace-normalised Gram matrix (F's minimiser does not
    depend on the scale), in NumPy (SciPy's own dependency), and d = g₀ + c‖g₀‖ g_w/‖g_w‖.

    That recovery needs g_w ≠ 0. When 0 is in the convex hull of the rows (no d improves
    every task: the best worst rate is at most 0) and the ball reaches the cone
    {d : gᵢ·d ≥ 0 for all i} (always for c ≥ 1, since d = 0 is in the ball), the best worst
    rate is exactly 0, the dual optimum is g_w = 0, and every d of the ball in that cone is
    optimal. d is then the one nearest g₀: the projection of g₀ on the cone (a small
    quadratic programme in the coefficients of the rows, also SLSQP). Otherwise the dual
    optimum has g_w ≠ 0 and the formula holds. Returns ``(weights, converged)``; when SLSQP
    fails the weights are 1/T.
    """
    num = len(gram)
    mean = torch.full((num,), 1.0 / num, dtype=torch.float64)
    scale = float(gram.trace()) / num
    if c == 0.0 or scale <= 0.0:
        return mean, True
    g = gram / scale
    radius = c * math.sqrt(max(float(mean @ g @ mean), 0.0))
    hull, _ = min_norm_weights(g, 1e-12, 250)
    if float(hull @ g @ hull) <= 1e-12 * float(g.diagonal().max()):  # 0 is in the hull
        nearest, converged = _nearest_common_ascent(g, mean, owner)
        gap = nearest - mean
        if not converged or math.sqrt(max(float(gap @ g @ gap), 0.0)) <= radius * (1.0 + 1e-9):
            return nearest, converged
    optimize = import_scipy_optimize(owner)
    import numpy as np

    start = mean.numpy()
    gn = g.numpy()
    b = gn @ start
    tiny = 1e-20

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        gw = gn @ w
        norm = math.sqrt(max(float(w @ gw), 0.0) + tiny)
        return float(w @ b) + radius * norm, b + radius * gw / norm

    result = optimize.minimize(
        objective,
        start,
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * num,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"maxiter": 200, "ftol": 1e-12},
    )
    if not result.success or not np.all(np.isfinite(result.x)):
        return mean, False
    w = np.clip(result.x, 0.0, None)
    w /= w.sum()
    norm = math.sqrt(max(float(w @ gn @ w), 0.0))
    if norm <= 1e-10:
        return mean, True
    return mean + (radius / norm) * torch.from_numpy(w), True


def _nearest_common_ascent(g: Tensor, mean: Tensor, owner: str) -> tuple[Tensor, bool]:
    """Coefficients a of the d = Σ aᵢ gᵢ nearest g₀ = Σ meanᵢ gᵢ with gᵢ·d ≥ 0 for all i:
    min (a − mean)ᵀ G (a − mean) s.t. G a ≥ 0, from a = 0 (d = 0, feasible)."""
    optimize = import_scipy_optimize(owner)
    import numpy as np

    gn, m = g.numpy(), mean.numpy()

    def objective(a: np.ndarray) -> tuple[float, np.ndarray]:
        gap = gn @ (a - m)
        return float((a - m) @ gap), 2.0 * gap

    result = optimize.minimize(
        objective,
        np.zeros_like(m),
        jac=True,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda a: gn @ a, "jac": lambda a: gn}],
        options={"maxiter": 200, "ftol": 1e-14},
    )
    if not result.success or not np.all(np.isfinite(result.x)):
        return mean, False
    return torch.from_numpy(result.x), True


def bargaining_weights(
    gram: Tensor, start: Tensor, tol: float, max_iters: int, fairness: float = 1.0
) -> tuple[Tensor, bool]:
    """α > 0 with (Gα)ᵢ = αᵢ^(−1/a) for all i, a = ``fairness``: Nash-MTL's bargaining
    solution for a = 1 ((Gα)ᵢ = 1/αᵢ), FairGrad's α-fair allocation for any a > 0.

    It is the unique minimiser of the strictly convex f(α) = ½ αᵀGα − Σᵢ h(αᵢ) over α > 0,
    with h' = α^(−1/a) (h = log α for a = 1, α^(1−1/a)/(1−1/a) otherwise), found by damped
    Newton steps (Hessian G + diag(α^(−1/a−1)/a)) that stay inside α > 0, with Armijo
    backtracking, from ``start``. It exists unless 0 is in the convex hull of the gradients
    (then f is unbounded below). Stops when maxᵢ |αᵢ^(1/a)(Gα)ᵢ − 1| ≤ ``tol``, or below the
    rounding floor of that residual in float64, 100 ε·max(1, 1/a) (a ``tol`` under it cannot
    be met: the solve would end unconverged at the solution). Returns ``(α, converged)``.
    """
    alpha = start.clone()
    power = 1.0 / fairness
    tol = max(tol, 100.0 * float(torch.finfo(torch.float64).eps) * max(1.0, power))

    def f(a: Tensor) -> float:
        h = a.log() if fairness == 1.0 else a ** (1.0 - power) / (1.0 - power)
        return float(0.5 * a @ gram @ a - h.sum())

    for _ in range(max_iters):
        products = gram @ alpha
        if float((alpha**power * products - 1.0).abs().max()) <= tol:
            return alpha, True
        grad = products - alpha ** (-power)
        try:
            step = -torch.linalg.solve(gram + torch.diag(power * alpha ** (-power - 1.0)), grad)
        except torch.linalg.LinAlgError:  # α ran off to infinity: no solution
            return alpha, False
        shrinking = step < 0.0
        t = min(1.0, 0.99 * float((-alpha[shrinking] / step[shrinking]).min())) if shrinking.any() else 1.0
        value, slope = f(alpha), float(grad @ step)
        slack = 1e-14 * (abs(value) + 1.0)  # rounding of f: lets Newton finish near the solution
        while f(alpha + t * step) > value + 1e-4 * t * slope + slack:
            t *= 0.5
            if t < 1e-12:
                return alpha, False
        alpha = alpha + t * step
        if not bool(alpha.isfinite().all()):
            return start, False
    return alpha, False
