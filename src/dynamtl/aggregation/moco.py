"""MoCo: multi-objective gradient correction with tracked gradients (Fernando et al., ICLR 2023)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._solvers import (
    check_jacobian,
    combine_rows,
    compute_dtype,
    gramian,
    nonzero_jacobian_rows,
    project_simplex,
    row_norms,
    scale_normalized,
    simplex_step,
)
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class MoCo(GradientAggregation):
    r"""Multi-objective gradient Correction: MGDA on *tracked* estimates of the task
    gradients, which removes the bias that stochastic MGDA weights carry, with weights that
    move by one projected gradient step per training step.

    With gₜ,ᵢ the task gradients of this step's batch, yₜ,ᵢ their tracked estimates (the
    columns of Yₜ), step sizes βₜ, γₜ and the regularisation ρ,

    .. math::

        y_{t+1,i} = \Pi_{r}\big(y_{t,i} - \beta_t (y_{t,i} - g_{t,i})\big), \qquad
        \lambda_{t+1} = \Pi_\Delta\big(\lambda_t - \gamma_t (Y_{t+1}^\top Y_{t+1} + \rho I)\,\lambda_t\big),
        \qquad d_t = Y_{t+1}\, \lambda_{t+1} ,

    where Π_r projects onto the ball of radius r (the paper's bound on the gradients'
    norms; no projection by default) and Π_Δ onto the probability simplex. The step sizes
    decay as βₜ = β/t^{σ_β}, γₜ = γ/t^{σ_γ} (constant by default). From *Mitigating
    Gradient Bias in Multi-objective Learning: A Provably Convergent Approach* (Fernando,
    Shen, Liu, Chaudhury, Murugesan & Chen, ICLR 2023), Algorithm 1.

    ``last_weights`` are λₜ₊₁, the weights of the tracked gradients: the update is
    Σᵢ λᵢ yᵢ, not a combination of this step's rows (except at the first step, where yᵢ = gᵢ).

    Args:
        beta: β, the tracking rate (default 0.1, the official code's; 1 tracks nothing:
            stochastic MGDA with one projected step of λ per training step).
        gamma: γ, the step size of λ (default 0.1, the official code's).
        rho: ρ ≥ 0, the regularisation of λ's step (default 0.1, the official code's).
        beta_decay, gamma_decay: σ_β, σ_γ ≥ 0 (default 0: constant steps; the paper's
            analysis takes decaying ones).
        radius: r, the radius of the ball the tracked gradients are projected onto
            (default ``None``: no projection).
        normalize: divide YᵀY by s², s the mean of the norms ‖yᵢ‖ (default; the normalisation
            of SDMGrad's official code, see :func:`scale_normalized`), so that γ and ρ do not
            depend on the scale of the gradients; ``False`` is the paper's raw step.

    State: the tracked gradients Y (``[T, D]`` over the shared parameters: the checkpoint
    grows by T times the size of the shared parameters), λ and the step count, all in the
    state dict. A tracked estimate that is zero (a task not seen yet) starts from the task's
    current gradient; rows that are zero in this batch (a task absent from it, or a
    weighting's λₖ = 0) keep their estimate and are left out of the step (the weights are
    taken over the present tasks, see :func:`simplex_step`). The weighted rows λₖ∇Lₖ are
    tracked: with a weighting whose λ moves, Y mixes rows of different weights. A change in
    the number of tasks or of shared parameters restarts the tracking.

    Differences to the official code (``LibMTL/weighting/MoCo.py`` of
    github.com/heshandevaka/Trade-Off-MOL, by the first author): ``normalize`` (that code
    can instead divide each yᵢ by its norm or its loss, off by default), the first estimates
    are the first gradients (that code starts from y = 0, so its first updates are β times
    too short), and the decays and ``radius`` are options of ours from the paper's analysis.
    TorchJD 0.18 has no MoCo.

    >>> import torch
    >>> moco = MoCo(beta=0.5, gamma=0.5, rho=0.0, normalize=False)
    >>> moco.combine(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    tensor([0.5000, 0.5000])
    >>> moco.combine(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))  # y = [[2, 0], [0, 1]]
    tensor([0.2500, 0.8750])
    """

    facts = aggregation_facts(
        "moco", "MoCo",
        "Fernando et al., Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach, "
        "ICLR 2023",
        options=("beta", "gamma", "rho", "beta_decay", "gamma_decay", "radius", "normalize"),
    )
    rows_across_batches: ClassVar[bool] = True

    option_ranges = intervals(
        beta="(0, 1]",
        gamma="(0, inf)",
        rho="[0, inf)",
        beta_decay="[0, inf)",
        gamma_decay="[0, inf)",
        radius="(0, inf)",
    )

    def __init__(
        self, beta: float = 0.1, gamma: float = 0.1, rho: float = 0.1, beta_decay: float = 0.0,
        gamma_decay: float = 0.0, radius: float | None = None, normalize: bool = True,
    ) -> None:
        super().__init__()
        self.beta, self.gamma, self.rho = float(beta), float(gamma), float(rho)
        self.beta_decay, self.gamma_decay = float(beta_decay), float(gamma_decay)
        self.radius = None if radius is None else float(radius)
        self.normalize = bool(normalize)
        self.tracked: Tensor | None = None
        self.weights: Tensor | None = None
        self.steps = 0

    def weights_and_update(self, jacobian: Tensor) -> tuple[Tensor, Tensor]:
        check_jacobian(type(self).__name__, jacobian)
        rows = jacobian.detach().to(compute_dtype(jacobian))
        num = len(rows)
        if self.tracked is None or self.tracked.shape != rows.shape:
            self.tracked, self.weights, self.steps = torch.zeros_like(rows), None, 0
        if self.weights is None:
            self.weights = torch.full((num,), 1.0 / num, dtype=torch.float64)
        self.steps += 1
        tracked = self.tracked.to(rows.device)
        present = nonzero_jacobian_rows(rows).to(rows.device)
        unseen = present & ~nonzero_jacobian_rows(tracked).to(rows.device)
        rate = self.beta / self.steps**self.beta_decay
        moved = torch.where(unseen[:, None], rows, tracked - rate * (tracked - rows))
        tracked = torch.where(present[:, None], moved, tracked)
        if self.radius is not None:
            tracked = tracked * (self.radius / row_norms(tracked).clamp_min(self.radius)).to(tracked)[:, None]
        self.tracked = tracked
        mask = present.cpu()
        gram = gramian(tracked)[mask][:, mask]
        if self.normalize:
            gram = scale_normalized(gram)
        gram = gram + self.rho * torch.eye(len(gram), dtype=gram.dtype)
        step_size = self.gamma / self.steps**self.gamma_decay

        def descend(weights: Tensor) -> Tensor:
            return project_simplex(weights - step_size * gram @ weights)

        self.weights, step = simplex_step(self.weights, mask, descend)
        return step, combine_rows(step, tracked).to(jacobian.dtype)

    def combine(self, jacobian: Tensor) -> Tensor:
        return self.weights_and_update(jacobian)[1]

    def get_extra_state(self) -> dict[str, Any]:
        return {"tracked": self.tracked, "weights": self.weights, "steps": self.steps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.tracked, self.weights, self.steps = state["tracked"], state["weights"], int(state["steps"])
