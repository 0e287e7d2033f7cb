"""MoDo: multi-objective gradient with double sampling (Chen, Fernando, Ying & Chen, 2023/2024)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from dynamtl.aggregation._solvers import double_sampled_gramian, project_simplex, simplex_step
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class MoDo(GradientAggregation):
    r"""Stochastic MGDA with double sampling: the weights λ take one projected gradient step
    per training step on ½‖Gλ‖², its gradient estimated without bias from two independent
    mini-batches, and the update combines the task gradients of a third.

    With Gᵦ the matrix whose columns are the task gradients on mini-batch b (rows of the
    Jacobian here) and the step size γ,

    .. math::

        \lambda_{t+1} = \Pi_\Delta\big(\lambda_t - \gamma\, G_1^\top G_2\, \lambda_t\big), \qquad
        d_t = G_3\, \lambda_{t+1} ,

    where Π_Δ is the Euclidean projection onto the probability simplex. Mini-batches 1 and
    2 are the step's two ``extra_batches``, mini-batch 3 is the step's own ``batch`` (its
    losses are reported and its gradients form the update). Because the batches are
    independent, G₁ᵀG₂λ is an unbiased estimate of ∇½‖Gλ‖² = GᵀGλ (the same batch twice
    would estimate the biased E[GᵀG]); λ carries over from step to step. From *Three-Way
    Trade-Off in Multi-Objective Learning: Optimization, Generalization and
    Conflict-Avoidance* (Chen, Fernando, Ying & Chen, NeurIPS 2023; JMLR 2024), Algorithm 1.

    Each step reads 3 mini-batches (``batches_per_step = 3``): 2 forward passes and 2T
    backward passes more than a one-batch gradient aggregation. ``last_weights`` are
    λₜ₊₁, the weights of this batch's rows.

    Args:
        gamma: the step size γ of λ (default 0.5, our choice).
        normalize: divide G₁ᵀG₂ by Σᵢ‖g₁ᵢ‖‖g₂ᵢ‖ (default), which bounds its eigenvalues by
            about 1, so that γ neither depends on the scale of the gradients nor needs to
            shrink with the number of tasks; ``False`` is the paper's raw step.

    Rows that are zero in this batch (a task absent from it, or λₖ = 0) are left out: the
    step's weights are taken over the present tasks (see :func:`simplex_step`) and an absent
    task keeps its λ for later steps. A task absent from an extra batch has a zero gradient
    there. λ is saved in the state dict; a change in the number of tasks restarts it at 1/T.

    Differences to the paper: ``normalize`` (on by default). We could not consult the
    official code offline; this follows the paper's algorithm.

    >>> import torch
    >>> g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> MoDo(gamma=0.5, normalize=False).sampled_row_weights(g, [g, g])
    tensor([0.8750, 0.1250], dtype=torch.float64)
    """

    facts = aggregation_facts(
        "modo", "MoDo",
        "Chen, Fernando, Ying & Chen, Three-Way Trade-Off in Multi-Objective Learning: Optimization, "
        "Generalization and Conflict-Avoidance, NeurIPS 2023 / JMLR 2024",
        options=("gamma", "normalize"), batches_per_step=3,
    )
    rows_across_batches: ClassVar[bool] = True

    def __init__(self, gamma: float = 0.5, normalize: bool = True) -> None:
        super().__init__()
        if not gamma > 0:
            raise ValueError(f"MoDo's gamma is a step size and must be > 0, got {gamma}")
        self.gamma = float(gamma)
        self.normalize = bool(normalize)
        self.weights: Tensor | None = None

    def sampled_row_weights(self, jacobian: Tensor, others: Sequence[Tensor]) -> Tensor:
        present, cross = double_sampled_gramian(type(self).__name__, jacobian, others, self.normalize)
        num = len(jacobian)
        if self.weights is None or len(self.weights) != num:
            self.weights = torch.full((num,), 1.0 / num, dtype=torch.float64)

        def descend(weights: Tensor) -> Tensor:
            return project_simplex(weights - self.gamma * cross @ weights)

        self.weights, step = simplex_step(self.weights, present, descend)
        return step

    def row_weights(self, jacobian: Tensor) -> Tensor:
        raise ValueError(
            "MoDo reads three mini-batches per step: call sampled_row_weights(J, [J1, J2]) with the rows of two "
            "independent extra batches, or MultiTask.step(batch, extra_batches=[batch_1, batch_2])"
        )

    def get_extra_state(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"]
