"""SDMGrad: stochastic direction-oriented multi-objective gradient (Xiao, Ban & Ji, NeurIPS 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._double_sampling import DoubleSampling
from dynamtl.aggregation._solvers import project_simplex
from dynamtl.facts import aggregation_facts


class SDMGrad(DoubleSampling):
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
        reg: the regularisation λ ≥ 0 toward the average gradient (default 0.3, the value
            of the official experiments).
        lr: the step size β of the inner iterations (default 10, the official code's).
        momentum: the inner iterations' heavy-ball momentum μ (default 0.5, the official
            code's; 0 is the paper's plain projected step): v ← μv + ∇, w ← Π_Δ(w − βv), v
            starting at 0 every step.
        iterations: S, the number of inner iterations per step (default 20).
        normalize: divide G_ξᵀG_ξ′ by s², s the mean of √max(g_ξ,ᵢ·g_ξ′,ᵢ, 0) over the tasks (default,
            as the official code; see :func:`scale_normalized`), so that β does not depend on
            the scale of the gradients; ``False`` is the paper's raw step.

    The inner iterations start from the previous step's w (1/T at the first step), which is
    saved in the state dict. Rows that are zero in this batch (a task absent from it, or a
    weighting's λₖ = 0) are left out: w, g₀ and T are those of the present tasks (see
    :func:`simplex_step`); a task absent from an extra batch has a zero gradient there.

    ``double_sampling=False`` is the official code's practical path (github.com/OptMN-Lab/sdmgrad,
    ``methods/weight_methods.py``): the Gram matrix GGᵀ of the step's one batch in place of
    G_ξᵀG_ξ′, and that batch's rows in the update (one batch per step).

    Differences to the paper, as in the official code: the S inner iterations reuse one
    pair (ξ, ξ′) per step (2 extra batches, not 2S), with momentum, the normalisation and
    the warm start. Differences to the official code: it adds 10⁻⁴ under the square root of
    the normalisation (we do not), and by default we read three batches, as the paper's
    Algorithm 1. The variant that samples a subset of the objectives (SDMGrad-OS) is not
    offered. Agrees with TorchJD's ``SDMGradWeighting``
    (``tests/test_torchjd_agreement_stochastic.py``).

    >>> import torch
    >>> g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> SDMGrad(reg=0.0, lr=0.2, momentum=0.0, iterations=100, normalize=False).sampled_row_weights(g, [g, g])
    tensor([0.8000, 0.2000], dtype=torch.float64)
    """

    facts = aggregation_facts(
        "sdmgrad", "SDMGrad",
        "Xiao, Ban & Ji, Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms, "
        "NeurIPS 2023",
        options=("reg", "lr", "momentum", "iterations", "normalize", "double_sampling"), batches_per_step=3,
    )

    option_ranges = intervals(reg="[0, inf)", lr="(0, inf)", momentum="[0, 1)", iterations="[1, inf)")

    def __init__(
        self, reg: float = 0.3, lr: float = 10.0, momentum: float = 0.5, iterations: int = 20, normalize: bool = True,
        double_sampling: bool = True,
    ) -> None:
        super().__init__(double_sampling, normalize)
        self.reg = float(reg)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.iterations = int(iterations)

    def descend(self, weights: Tensor, cross: Tensor) -> Tensor:
        toward_mean = self.reg / len(weights)
        velocity = torch.zeros_like(weights)
        for _ in range(self.iterations):
            velocity = self.momentum * velocity + cross @ (weights + toward_mean)
            weights = project_simplex(weights - self.lr * velocity)
        return weights

    def step_weights(self, weights: Tensor) -> Tensor:
        return (weights + self.reg / len(weights)) / (1.0 + self.reg)
