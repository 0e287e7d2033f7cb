"""GradDrop: keep, per coordinate, the gradients of one sign only (Chen et al., 2020)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from dynamtl._helpers import intervals, is_scalar
from dynamtl.aggregation._solvers import (
    SeededGenerator,
    check_jacobian,
    per_task,
)
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class GradDrop(GradientAggregation):
    r"""Gradient Sign Dropout.

    Per coordinate, the *positive sign purity* of the task gradients

    .. math::

        P = \tfrac12 \Big(1 + \frac{\sum_i g_i}{\sum_i |g_i|}\Big) \in [0, 1]

    decides which sign survives: with U ~ Uniform[0, 1) drawn per coordinate, the positive
    components are kept where f(P) > U and the negative ones elsewhere, and

    .. math::

        d = \sum_i \big(\ell_i + (1 - \ell_i) M_i\big)\, g_i ,\qquad
        M_i = \mathbb 1[f(P) > U]\,\mathbb 1[g_i > 0] + \mathbb 1[f(P) \le U]\,\mathbb 1[g_i < 0].

    From *Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout*
    (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov, NeurIPS 2020), Algorithm 1.
    Where all gradients agree in sign (P ∈ {0, 1}) nothing is dropped: identical rows give
    their sum. Since Σᵢ gᵢ = S⁺ + S⁻ and Σᵢ |gᵢ| = S⁺ − S⁻ with S± the sums of the positive
    and negative parts, P = S⁺ / (S⁺ − S⁻) and d needs no loop over tasks.

    Weighted rows: the rows are λₖ ∇Lₖ, so a task with a larger λ weighs more in the sign
    purity P (it wins its sign more often), and every kept component carries its λ.

    Args:
        f: the monotonically increasing map applied to P (the paper's f; default the
            identity). It receives and returns a tensor of the shape of P.
        leak: ℓᵢ ∈ [0, 1], how much of task i's gradient passes untouched: one value for all
            tasks or one per task (the paper's leak for auxiliary or transfer settings;
            default 0).
        seed: seed of the generator of U (on the Jacobian's device). Its state is saved in
            the state dict, so a reloaded GradDrop draws the same masks.

    Differences to the paper: the paper applies GradDrop to the gradients of the
    activations of one chosen layer (summed over the batch for P) and back-propagates the
    result; here it acts on the gradients of the shared parameters, as the common
    re-implementations do. Ties f(P) = U keep the negative sign, so every coordinate keeps
    exactly one sign. Half-precision rows (float16, bfloat16) are summed in float32, and U is
    drawn in float64 for every dtype (the same masks whatever the dtype).

    >>> import torch
    >>> GradDrop().combine(torch.tensor([[1.0, -2.0], [1.0, -2.0]]))
    tensor([ 2., -4.])
    """

    facts = aggregation_facts(
        "graddrop", "GradDrop", "Chen et al., Just Pick a Sign: GradDrop, NeurIPS 2020",
        options=("leak",), context={"seed": "seed"},
    )

    option_ranges = intervals(leak="[0, 1]", seed="[0, inf)")

    def __init__(
        self,
        f: Callable[[Tensor], Tensor] | None = None,
        leak: float | Sequence[float] = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.f = f
        self.leak = float(leak) if is_scalar(leak) else leak  # type: ignore[arg-type]
        self.generator = SeededGenerator(seed)

    def combine(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        rows = jacobian.detach()
        if rows.dtype in (torch.float16, torch.bfloat16):
            rows = rows.float()
        leak = per_task(type(self).__name__, "leak", self.leak, rows.shape[0])
        positive_parts = rows.clamp(min=0.0)
        positive = positive_parts.sum(0)
        negative = rows.sum(0) - positive
        # P = S⁺ / (S⁺ − S⁻); it is NaN where every row is 0, and both choices are 0 there
        purity = positive / (positive - negative)
        if self.f is not None:
            purity = self.f(purity)
        generator = self.generator.on(rows.device)
        # U is drawn in float64 whatever the dtype: the same seed gives the same masks in
        # float64, float32, bfloat16 and float16
        uniform = torch.rand(purity.shape, generator=generator, dtype=torch.float64, device=rows.device)
        keep_positive = purity > uniform.to(purity)
        if not leak.any():
            return torch.where(keep_positive, positive, negative).to(jacobian.dtype)
        kept = torch.as_tensor(1.0 - leak, dtype=rows.dtype, device=rows.device)
        masked = torch.where(keep_positive, kept @ positive_parts, kept @ (rows - positive_parts))
        return (masked + torch.as_tensor(leak, dtype=rows.dtype, device=rows.device) @ rows).to(jacobian.dtype)

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.load(state["generator"])
