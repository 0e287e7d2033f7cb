"""DB-MTL: dual balancing of loss scales (log) and gradient magnitudes (Lin et al., 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._solvers import row_norms
from dynamtl.aggregation.base import shared_parameters, shared_rows
from dynamtl.context import StepContext, widened
from dynamtl.facts import Facts
from dynamtl.weighting.base import Weighting


class DBMTL(Weighting):
    r"""Dual-balancing multi-task learning: log-losses, then gradients of equal size.

    Loss-scale balancing: each task trains on log(Lᵢ + ε), whose gradient is
    ∇Lᵢ/(Lᵢ + ε), so a task's scale does not matter. Gradient-magnitude balancing: with
    ĝᵢ an exponential moving average of ∇θₛ log(Lᵢ + ε) over the shared parameters θₛ,

    .. math::

        \hat g_{i,t} = \beta_t\, \hat g_{i,t-1} + (1 - \beta_t)\, \nabla_{\theta_s} \log(L_i + \epsilon),
        \qquad \beta_t = \beta / t^{\sigma},

    every task's gradient is scaled to the largest average norm:

    .. math::

        \lambda_i = \frac{1}{L_i + \epsilon} \cdot \frac{\max_j \lVert \hat g_j \rVert}{\lVert \hat g_i \rVert} .

    From *Dual-Balancing for Multi-Task Learning* (Lin, Ye, Xu, Zhang, Kwok, arXiv 2023),
    Algorithm 1. The per-task gradients come from :meth:`StepContext.task_gradients` (one
    backward pass per task, shared with the aggregation).

    Differences to the official code (LibMTL): it steps along Σᵢ (max‖ĝ‖/‖ĝᵢ‖) ĝᵢ, the
    *averaged* gradients, on the shared parameters; here the factors scale this step's
    gradients of log(Lᵢ + ε) (λ above), so that DB-MTL is a weighting that composes with any
    aggregation. Task heads get the same λᵢ times their task's gradient (the official code
    gives them the unscaled gradient of log(Lᵢ + ε)). A task whose averaged gradient is zero
    keeps the factor 1; a task without a graph in this step (no labelled sample) gets λ = 0.

    Args:
        beta: β of the moving average (the official default 0.9).
        sigma: σ, how fast β_t decays with the step t (the official default 0.5).
        epsilon: ε in log(Lᵢ + ε) (1e-8 as in the official code).

    The averages and the step count are saved in the state dict.
    """

    facts = Facts(
        "db-mtl", "DB-MTL", "gradients",
        "Lin, Ye, Xu, Zhang & Kwok, Dual-Balancing for Multi-Task Learning, arXiv 2023",
        "0", "T−1", options=("beta", "sigma", "epsilon"),
    )

    option_ranges = intervals(beta="[0, 1]", sigma="[0, inf)", epsilon="[0, inf)")

    def __init__(self, beta: float = 0.9, sigma: float = 0.5, epsilon: float = 1e-8) -> None:
        super().__init__()
        self.beta = float(beta)
        self.sigma = float(sigma)
        self.epsilon = float(epsilon)
        self.average: Tensor | None = None
        self.steps = 0

    def weights(self, ctx: StepContext) -> Tensor:
        losses = ctx.losses.detach()
        present = torch.tensor(ctx.present, device=losses.device)
        if bool((present & (losses + self.epsilon <= 0)).any()):
            bad = {n: float(v) for n, v in zip(self.task_names or (), losses.tolist()) if v + self.epsilon <= 0}
            raise ValueError(
                f"DB-MTL takes log(L + epsilon), which needs every loss > -epsilon; got {bad} at step {ctx.step + 1}: "
                "shift a loss that can be negative"
            )
        inverse = torch.where(present, 1.0 / (losses + self.epsilon), torch.zeros_like(losses))
        grads = ctx.task_gradients()
        shared = shared_parameters(grads)
        if not shared:
            return inverse
        rows = widened(shared_rows(ctx, grads, shared))  # a half-precision model's average is kept in float32
        rows = rows * inverse.to(rows)[:, None]
        self.steps += 1
        rate = self.beta / self.steps**self.sigma
        if self.average is None or self.average.shape != rows.shape:
            self.average = (1.0 - rate) * rows
        else:
            self.average = rate * self.average.to(rows) + (1.0 - rate) * rows
        # norms of the rows divided by their largest entry: a row of 1e-22 (a loss far below ε)
        # has a squared norm below float32's range, and its norm must not read as 0
        norms = row_norms(self.average)
        scale = torch.where(norms > 0, norms.max() / torch.where(norms > 0, norms, 1.0), torch.ones_like(norms))
        return inverse * scale.to(inverse)

    def get_extra_state(self) -> dict[str, Any]:
        return {"average": self.average, "steps": self.steps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.average, self.steps = state["average"], int(state["steps"])
