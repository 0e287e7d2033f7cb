"""OL-AUX (Lin, Baweja, Kantor & Held, NeurIPS 2019): auxiliary weights learned online."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation.base import shared_parameters
from dynamtl.context import Gradients, StepContext, combine_gradients, widened
from dynamtl.facts import Facts
from dynamtl.tasks import name_list
from dynamtl.weighting.base import Weighting, main_and_auxiliary


class OLAux(Weighting):
    r"""Auxiliary weights moved, every N steps, in the direction that lowers the main loss
    N steps ahead.

    From *Adaptive Auxiliary Task Weighting for Reinforcement Learning* (Lin, Baweja, Kantor
    & Held, NeurIPS 2019). The training loss is Σ_{m ∈ main} L_m + Σₖ wₖ Lₖ over the
    auxiliary tasks k. After N gradient steps of size α from θ_t, to first order,

        −∂L_main(θ_{t+N})/∂wₖ ≈ α Σ_{j=0}^{N−1} ⟨∇θ L_main(θ_{t+j}), ∇θ Lₖ(θ_{t+j})⟩,

    with L_main = Σ_{m ∈ main} L_m: an auxiliary task whose gradients agreed with the main
    task's over the last N steps helped it and gains weight; one that conflicted loses it.
    At every step this weighting adds the inner products ⟨∇θ L_main, ∇θ Lₖ⟩ (over the
    parameters both losses depend on) to accumulators aₖ; every N-th step, after that
    step's weights are used,

        wₖ ← wₖ + β · aₖ / N,   aₖ ← 0.

    Scaling: the paper updates w ← w − β_paper ∇_w L_main with the estimate above, i.e.
    wₖ ← wₖ + β_paper · α · Σⱼ ⟨·,·⟩. Here the sum is averaged over the N steps and the
    model's learning rate α is left out, so ``beta`` = β_paper · α · N: the size of an
    update does not change with N or with the model's learning rate schedule. The inner
    products scale with the squared gradient norms, so ``beta`` is problem-dependent: read
    :attr:`accumulated` over a few updates to set it.

    The weights w (main tasks fixed at 1), the accumulators and the position in the
    current window of N steps are buffers of the state dict, so a resumed run continues
    identically. The per-task gradients come from :meth:`StepContext.task_gradients` (one
    backward pass per task, shared with the aggregation).

    Args:
        main: the main task name(s); every other task is auxiliary.
        interval: N, the number of steps between weight updates (5 by default).
        beta: β, the step size of the weight update.
        init: the initial weight of every auxiliary task (1, the plain sum of losses).
        nonnegative: clamp the auxiliary weights at 0 after every update. Off by default,
            as in the paper; a negative weight makes training ascend that auxiliary loss.

    Attributes:
        task_weights: the current weights, in task order.
        accumulated: aₖ, the inner products summed since the last update (0 for main tasks).
    """

    facts = Facts(
        "ol-aux", "OL-AUX", "gradients",
        "Lin, Baweja, Kantor & Held, Adaptive Auxiliary Task Weighting for Reinforcement Learning, NeurIPS 2019",
        "0", "T−1", options=("interval", "beta", "init", "nonnegative"), context={"main": "primary"},
        auxiliary_only=True,
    )

    # buffers (registered in __init__)
    task_weights: Tensor
    accumulated: Tensor
    count: Tensor

    option_ranges = intervals(interval="[1, inf)", beta="(0, inf)", init="(-inf, inf)")

    def __init__(
        self,
        main: Sequence[str] | str,
        *,
        interval: int = 5,
        beta: float = 0.1,
        init: float = 1.0,
        nonnegative: bool = False,
    ) -> None:
        super().__init__()
        self.main_names = name_list(main, "main")
        self.interval, self.beta, self.init, self.nonnegative = interval, beta, init, nonnegative
        self.main: tuple[int, ...] = ()
        self.auxiliary: tuple[int, ...] = ()
        self.register_buffer("task_weights", torch.zeros(0))
        self.register_buffer("accumulated", torch.zeros(0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def _on_bind(self) -> None:
        names = self.task_names or ()
        self.main, self.auxiliary = main_and_auxiliary(names, self.main_names, "OLAux")
        self.task_weights = torch.ones(len(names))
        self.task_weights[list(self.auxiliary)] = float(self.init)
        self.accumulated = torch.zeros(len(names))

    def weights(self, ctx: StepContext) -> Tensor:
        grads = ctx.task_gradients()
        main = combine_gradients([grads[m] for m in self.main], [1.0] * len(self.main))
        for k in self.auxiliary:
            self.accumulated[k] += _dot(main, grads[k]).to(self.accumulated)
        self.count += 1
        used = self.task_weights.clone()
        if int(self.count) == self.interval:
            aux = list(self.auxiliary)
            self.task_weights[aux] += self.beta * self.accumulated[aux] / self.interval
            if self.nonnegative:
                self.task_weights.clamp_(min=0.0)
            self.accumulated.zero_()
            self.count.zero_()
        return used.to(widened(ctx.losses))


def _dot(a: Gradients, b: Gradients) -> Tensor:
    """⟨a, b⟩ summed over the parameters both have a gradient for."""
    names = shared_parameters([a, b])
    return sum(((widened(a[n].detach()) * widened(b[n].detach())).sum() for n in names), torch.zeros(()))  # type: ignore[union-attr]
