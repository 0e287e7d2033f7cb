"""HydaLearn (Verboven, Chaudhary, Berrevoets & Verbeke, 2020): weights from main-task gains."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.context import Gradients, StepContext, combine_gradients, widened
from dynamtl.facts import Facts
from dynamtl.lookahead import learning_rates
from dynamtl.objective import capture_rng
from dynamtl.tasks import name_list, task_indices
from dynamtl.weighting.base import Weighting


class HydaLearn(Weighting):
    r"""Per-mini-batch weights proportional to the gain each task's gradient brings to the
    main task.

    From *HydaLearn: Highly Dynamic Task Weighting for Multi-task Learning with Auxiliary
    Tasks* (Verboven et al., 2020). At every step, for every task k (the main task(s)
    included), the gain of a gradient step with ∇Lₖ alone on the main loss
    L_main = Σ_{m ∈ main} L_m is

    * ``gain="lookahead"`` (default): δₖ = L_main(θ) − L_main(θ − η ∇θ Lₖ(θ)), one
      forward pass without graph per task;
    * ``gain="first_order"``: δₖ ≈ η ⟨∇θ L_main(θ), ∇θ Lₖ(θ)⟩, no extra forward pass.

    Negative gains are clipped to 0 and the weights follow the gains, wᵢ/wⱼ = δᵢ/δⱼ:
    sₖ = max(max(δₖ, 0)/Σⱼ max(δⱼ, 0), ``floor``), then ``normalize="sum"`` scales s to sum
    to ``total`` (default T, the scale of equal weights) and ``normalize="main"`` scales it
    so the main task(s) weigh 1 on average (the main task then trains at the optimizer's
    learning rate, as in single-task learning: with ``"sum"`` it gets up to T times it
    under SGD; on Fashion-MNIST the two were within seed noise, see ``docs/claims.md``). With
    ``smoothing`` β > 0 the weights used are an exponential moving average of those
    per-batch weights, w̄ₜ = β w̄ₜ₋₁ + (1 − β) wₜ (w̄₁ = w₁), trading the per-batch reaction
    for less variance. When no task has a positive gain (the step
    size is too large for even the main task's gradient to help) the weights fall back to
    1 for every task, and :attr:`fallbacks` counts how often.

    The paper's full text is not available to us; these are our readings, all parameters:
    the look-ahead is a plain gradient step of size η (the optimizer's learning rate of
    each parameter's group unless ``step_size`` is given), not the optimizer's own step
    (momentum is shared by all tasks and would blur their gains); gains are measured on the
    current training batch (``gain_batch="current"``) or on a meta batch (``"meta"``).
    The per-task gradients are computed once (T backward passes) and the step's gradient
    is their weighted sum, with no further backward pass. Under DDP (torchrun) the
    gradients and gains are averaged over the processes: those of the global batch.
    Under mixed precision the look-ahead passes run under the caller's autocast, like the
    training pass they are compared with (a gain is the loss change of a whole
    learning-rate step, not a finite difference of size ε as in Auto-Lambda).

    Args:
        main: the main task name(s).
        gain: ``"lookahead"`` or ``"first_order"``.
        gain_batch: ``"current"`` or ``"meta"``.
        step_size: η; ``None`` uses the optimizer's learning rates.
        floor: the smallest share a task keeps (0 = tasks with no gain get no weight).
        normalize: ``"sum"`` or ``"main"``.
        total: what the weights sum to with ``normalize="sum"`` (default: the number of
            tasks whose loss has a graph in this step, T when every task has one; a task
            absent from a batch gets weight 0 and the step is the step on the others).
        smoothing: β in [0, 1), the weight of the past in the moving average (0: none, the
            paper's per-batch weights).
    """

    facts = Facts(
        "hydalearn", "HydaLearn", "look-ahead",
        "Verboven, Chaudhary, Berrevoets & Verbeke, HydaLearn: Highly Dynamic Task Weighting, 2020",
        "T without graph (0 with gain=first_order)", "T−1",
        options=("gain", "gain_batch", "step_size", "floor", "normalize", "total", "smoothing"),
        context={"main": "primary"},
    )

    smoothed: Tensor  # the last smoothed weights (empty before the first step), a buffer

    option_ranges = intervals(step_size="(0, inf)", floor="[0, 1)", total="(0, inf)", smoothing="[0, 1)")

    def __init__(
        self,
        main: Sequence[str] | str,
        *,
        gain: Literal["lookahead", "first_order"] = "lookahead",
        gain_batch: Literal["current", "meta"] = "current",
        step_size: float | None = None,
        floor: float = 0.0,
        normalize: Literal["sum", "main"] = "sum",
        total: float | None = None,
        smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.main_names = name_list(main, "main")
        self.gain, self.gain_batch, self.step_size = gain, gain_batch, step_size
        self.floor, self.normalize, self.total, self.smoothing = floor, normalize, total, smoothing
        self.register_buffer("smoothed", torch.zeros(0))
        self.needs_meta_batch = gain_batch == "meta"
        self.needs_optimizer = step_size is None
        self.main: tuple[int, ...] = ()
        self.fallbacks = 0
        self.last_gains: Tensor | None = None

    def _on_bind(self) -> None:
        self.main = task_indices(self.task_names or (), self.main_names, role="main")

    def weights(self, ctx: StepContext) -> Tensor:
        grads = ctx.task_gradients(heads_apart=False)  # inner products: a zero gradient is as none
        rates = self._step_sizes(ctx)
        if self.gain == "first_order":
            main_grad = self._main_gradient(ctx, grads)
            gains = torch.stack([_dot(main_grad, g, rates, ctx.losses.device) for g in grads])
        else:
            gains = self._lookahead_gains(ctx, grads, rates)
        self.last_gains = gains.detach()
        weights = self._weights_from_gains(gains.detach(), sum(ctx.present))
        if self.smoothing > 0.0:
            if self.smoothed.numel():
                weights = self.smoothing * self.smoothed.to(weights) + (1.0 - self.smoothing) * weights
            self.smoothed = weights.clone()
        return weights

    def _step_sizes(self, ctx: StepContext) -> dict[str, float]:
        if self.step_size is not None:
            return dict.fromkeys(ctx.params, self.step_size)
        assert ctx.optimizer is not None
        return learning_rates(ctx.optimizer, ctx.params)

    def _main_names(self) -> list[str]:
        """The main tasks' names in task order (the meta batch needs their targets only)."""
        names = self.task_names or ()
        return [names[m] for m in self.main]

    def _main_loss(self, losses: Tensor) -> Tensor:
        return losses[list(self.main)].sum()

    def _main_gradient(self, ctx: StepContext, grads: list[Gradients]) -> Gradients:
        if self.gain_batch == "current":
            return combine_gradients([grads[m] for m in self.main], [1.0] * len(self.main))
        leaves = {n: t.requires_grad_() for n, t in ctx.current_params().items()}
        losses = ctx.objective.task_losses(ctx.meta_batch, leaves, pass_name="meta", only=self._main_names())
        loss = torch.stack(losses).sum()  # the main tasks' graphs only
        meta_grads = ctx.objective.precision.gradients(loss, list(leaves.values()), ctx.objective.replicas)
        return dict(zip(leaves, meta_grads))

    def _lookahead_gains(self, ctx: StepContext, grads: list[Gradients], rates: dict[str, float]) -> Tensor:
        theta = ctx.current_params()
        with torch.no_grad():
            # gains in float32 at least: float16 losses differ by a few units in the last place
            if self.gain_batch == "current":
                batch, rng, base = ctx.batch, ctx.rng, self._main_loss(widened(ctx.losses.detach()))
            else:
                batch, rng = ctx.meta_batch, capture_rng(ctx.objective.device)
                base = widened(ctx.objective.losses(batch, theta, rng, "meta", only=self._main_names())).sum()
            which = "training" if self.gain_batch == "current" else "meta"
            gains = []
            for name, g in zip(ctx.objective.tasks.names, grads):
                after = ctx.objective.losses(
                    batch, _moved(theta, g, rates), rng, f"look-ahead of task {name!r} ({which} batch)",
                    only=self._main_names(),
                )
                gains.append(base - widened(after).sum())
        return ctx.objective.replicas.mean(torch.stack(gains))

    def _weights_from_gains(self, gains: Tensor, present: int | None = None) -> Tensor:
        """Weights from the gains; ``present``: the number of tasks with a gradient this step."""
        positive = gains.clamp(min=0.0)
        main = list(self.main)
        if float(positive.sum()) <= 0.0 or (self.normalize == "main" and float(positive[main].sum()) <= 0.0):
            self.fallbacks += 1
            return torch.ones_like(gains)
        share = (positive / positive.sum()).clamp(min=self.floor)
        if self.normalize == "main":
            return share / share[main].mean()
        total = self.total if self.total is not None else float(present or self.num_tasks)
        return total * share / share.sum()


def _moved(theta: dict[str, Tensor], grad: Gradients, rates: dict[str, float]) -> dict[str, Tensor]:
    """θ − η ⊙ g (parameters without a gradient or a step size stay), in ``torch._foreach_*`` calls."""
    names = [n for n in theta if grad.get(n) is not None and n in rates]
    if not names:
        return theta
    steps = torch._foreach_mul([grad[n] for n in names], [-rates[n] for n in names])  # type: ignore[misc]
    return {**theta, **dict(zip(names, torch._foreach_add([theta[n] for n in names], steps)))}


def _dot(a: Gradients, b: Gradients, rates: dict[str, float], device: torch.device) -> Tensor:
    """Σ over parameters of η_p ⟨a_p, b_p⟩ (parameters missing from either count 0), in
    float32 at least."""
    total = torch.zeros((), dtype=torch.float32, device=device)  # float64 terms make it float64
    for n, x in a.items():
        y = b.get(n)
        if x is not None and y is not None and n in rates:
            total = total + rates[n] * (widened(x) * widened(y)).sum()
    return total

