"""SDMGrad: stochastic direction-oriented multi-objective gradient (Xiao, Ban & Ji, NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from dynamtl.aggregation._solvers import double_sampled_gramian, project_simplex, simplex_step
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class SDMGrad(GradientAggregation):
    r"""Stochastic Direction-oriented Multi-objective Gradient descent: the min-norm
    direction of MGDA regularised toward the average gradient g₀, its weights found by
    projected stochastic gradient steps with double sampling.

    SDMGrad's direction solves max_d min_i ⟨gᵢ, d⟩ − ½‖d‖² with d kept near g₀ = (1/T)Σᵢgᵢ;
    its dual is

    .. math::

        w^* = \arg\min_{w \in \Delta} \tfrac12 \lVert G w + \lambda g_0 \rVert^2, \qquad
        d = \frac{G w^* + \lambda g_0}{1 + \lambda}
          = \sum_i \frac{w^*_i + \lambda / T}{1 + \lambda}\, g_i ,

    with λ ≥ 0 the regularisation (0: MGDA's min-norm point; λ → ∞: the average gradient).
    The gradient of the objective is Gᵀ(Gw + λg₀) = GᵀG(w + λ/T·1); SDMGrad estimates it
    without bias from two independent mini-batches ξ, ξ′ and takes S projected steps of
    size β,

    .. math::

        w_{s+1} = \Pi_\Delta\big(w_s - \beta\, G_\xi^\top G_{\xi'} (w_s + \tfrac{\lambda}{T} 1)\big),

    then the update combines the task gradients of a third mini-batch ζ with the weights
    (w_S + λ/T)/(1 + λ). ξ and ξ′ are the step's two ``extra_batches``, ζ is the step's own
    ``batch``. From *Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms* (Xiao, Ban & Ji, NeurIPS 2023), Algorithm 1.

    Each step reads 3 mini-batches (``batches_per_step = 3``): 2 forward passes and 2T
    backward passes more than a one-batch gradient aggregation. ``last_weights`` are the
    weights (w_S + λ/T)/(1 + λ) of this batch's rows; they sum to 1.

    Args:
        reg: the regularisation λ ≥ 0 toward the average gradient (default 0.3, our choice;
            the paper tunes it per benchmark).
        lr: the step size β of the inner iterations (default 1.0, our choice).
        iterations: S, the number of inner iterations per step (default 20).
        normalize: divide G_ξᵀG_ξ′ by Σᵢ‖g_ξ,ᵢ‖‖g_ξ′,ᵢ‖ (default), which bounds its eigenvalues
            by about 1, so that β neither depends on the scale of the gradients nor needs to
            shrink with the number of tasks (β < 2 is stable); ``False`` is the paper's raw step.

    The inner iterations start from the previous step's w (1/T at the first step), which is
    saved in the state dict. Rows that are zero in this batch (a task absent from it, or a
    weighting's λₖ = 0) are left out: w, g₀ and T are those of the present tasks (see
    :func:`simplex_step`); a task absent from an extra batch has a zero gradient there.

    Differences to the paper: the S inner iterations reuse one pair (ξ, ξ′) per step (2
    extra batches, not 2S); ``normalize``; the warm start. The paper's variant that samples
    a subset of the objectives (SDMGrad-OS) is not offered. We could not consult the
    official code offline.

    >>> import torch
    >>> g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> SDMGrad(reg=0.0, lr=0.2, iterations=100, normalize=False).sampled_row_weights(g, [g, g])  # MGDA's
    tensor([0.8000, 0.2000], dtype=torch.float64)
    """

    facts = aggregation_facts(
        "sdmgrad", "SDMGrad",
        "Xiao, Ban & Ji, Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms, "
        "NeurIPS 2023",
        options=("reg", "lr", "iterations", "normalize"), batches_per_step=3,
    )
    rows_across_batches: ClassVar[bool] = True

    def __init__(self, reg: float = 0.3, lr: float = 1.0, iterations: int = 20, normalize: bool = True) -> None:
        super().__init__()
        if not reg >= 0:
            raise ValueError(f"SDMGrad's reg is the pull toward the average gradient and must be >= 0, got {reg}")
        if not lr > 0:
            raise ValueError(f"SDMGrad's lr is a step size and must be > 0, got {lr}")
        if iterations < 1:
            raise ValueError(f"SDMGrad's iterations must be >= 1, got {iterations}")
        self.reg = float(reg)
        self.lr = float(lr)
        self.iterations = int(iterations)
        self.normalize = bool(normalize)
        self.weights: Tensor | None = None

    def sampled_row_weights(self, jacobian: Tensor, others: Sequence[Tensor]) -> Tensor:
        present, cross = double_sampled_gramian(type(self).__name__, jacobian, others, self.normalize)
        num = len(jacobian)
        if self.weights is None or len(self.weights) != num:
            self.weights = torch.full((num,), 1.0 / num, dtype=torch.float64)
        toward_mean = self.reg / max(int(present.sum()), 1)

        def descend(weights: Tensor) -> Tensor:
            for _ in range(self.iterations):
                weights = project_simplex(weights - self.lr * cross @ (weights + toward_mean))
            return weights

        self.weights, step = simplex_step(self.weights, present, descend)
        step[present] = (step[present] + toward_mean) / (1.0 + self.reg)
        return step

    def row_weights(self, jacobian: Tensor) -> Tensor:
        raise ValueError(
            "SDMGrad reads three mini-batches per step: call sampled_row_weights(J, [J1, J2]) with the rows of two "
            "independent extra batches, or MultiTask.step(batch, extra_batches=[batch_1, batch_2])"
        )

    def get_extra_state(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"]
