"""MoDo: multi-objective gradient with double sampling (Chen, Fernando, Ying & Chen, 2023/2024)."""

from __future__ import annotations

from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._double_sampling import DoubleSampling
from dynamtl.aggregation._solvers import project_simplex
from dynamtl.facts import aggregation_facts


class MoDo(DoubleSampling):
    r"""Stochastic MGDA with double sampling: the weights λ take one projected gradient step
    per training step on ½‖Gλ‖² + ½ρ‖λ‖², its gradient estimated without bias from two
    independent mini-batches, and the update combines the task gradients of a third.

    With Gᵦ the matrix whose columns are the task gradients on mini-batch b (rows of the
    Jacobian here), the step size γ and the regularisation ρ,

    .. math::

        \lambda_{t+1} = \Pi_\Delta\big(\lambda_t - \gamma\, (G_1^\top G_2 + \rho I)\, \lambda_t\big), \qquad
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
        gamma: the step size γ of λ (default 0.1, the official code's).
        rho: ρ ≥ 0, the regularisation of λ's step (default 0.1, the official code's).
        normalize: divide G₁ᵀG₂ by s², s the mean of √max(g₁ᵢ·g₂ᵢ, 0) over the tasks (default; the
            normalisation of SDMGrad's official code, see :func:`scale_normalized`), so that γ
            and ρ do not depend on the scale of the gradients; ``False`` is the paper's raw step.

    ``double_sampling=False``: the Gram matrix of this batch's rows in place of G₁ᵀG₂ and one
    batch per step (see :class:`DoubleSampling`).

    Rows that are zero in this batch (a task absent from it, or λₖ = 0) are left out: the
    step's weights are taken over the present tasks (see :func:`simplex_step`) and an absent
    task keeps its λ for later steps. A task absent from an extra batch has a zero gradient
    there. λ is saved in the state dict; a change in the number of tasks restarts it at 1/T.

    Differences to the official code (``LibMTL/weighting/MoDo.py`` of
    github.com/heshandevaka/Trade-Off-MOL, the authors'): ``normalize`` (on by default; the
    official step is raw), and the update uses the third batch's gradients as in the paper's
    Algorithm 1 (the version of that code we read updates with the sum of the two batches'
    gradients).
    Agrees with TorchJD's ``MoDoWeighting`` given ``normalize=False``
    (``tests/test_torchjd_agreement_stochastic.py``).

    >>> import torch
    >>> g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> MoDo(gamma=0.5, rho=0.0, normalize=False).sampled_row_weights(g, [g, g])
    tensor([0.8750, 0.1250], dtype=torch.float64)
    """

    facts = aggregation_facts(
        "modo", "MoDo",
        "Chen, Fernando, Ying & Chen, Three-Way Trade-Off in Multi-Objective Learning: Optimization, "
        "Generalization and Conflict-Avoidance, NeurIPS 2023 / JMLR 2024",
        options=("gamma", "rho", "normalize", "double_sampling"), batches_per_step=3,
    )

    option_ranges = intervals(gamma="(0, inf)", rho="[0, inf)")

    def __init__(
        self, gamma: float = 0.1, rho: float = 0.1, normalize: bool = True, double_sampling: bool = True
    ) -> None:
        super().__init__(double_sampling, normalize)
        self.gamma = float(gamma)
        self.rho = float(rho)

    def descend(self, weights: Tensor, cross: Tensor) -> Tensor:
        return project_simplex(weights - self.gamma * (cross @ weights + self.rho * weights))
