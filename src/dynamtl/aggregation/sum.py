"""Sum: the gradient of the weighted loss."""

from __future__ import annotations

import torch
from torch import Tensor

from dynamtl.aggregation.base import Aggregation, accumulate, weighting_backward
from dynamtl.context import StepContext, combine_gradients
from dynamtl.facts import aggregation_facts


class Sum(Aggregation):
    """g = Σᵢ λᵢ ∇θ Lᵢ, the gradient of the weighted loss Σᵢ λᵢ Lᵢ (the default).

    One backward pass of the weighted loss; when the weighting already computed the
    per-task gradients (HydaLearn, GradNorm...), their weighted sum is formed directly and
    no backward pass is made at all.
    """

    facts = aggregation_facts("sum", "Sum", "the gradient of the weighted loss", extra_backward="0")

    def backward(self, ctx: StepContext, weights: Tensor, regularizer: Tensor | None) -> None:
        self.last_weights = torch.ones_like(weights.detach())
        if ctx.has_task_gradients:
            accumulate(ctx, combine_gradients(ctx.task_gradients(heads_apart=False), weights.detach()))
            weighting_backward(ctx, weights, regularizer)
            return
        total = (weights * ctx.losses).sum()
        if regularizer is not None:
            total = total + regularizer
        if total.requires_grad:  # not when no task's loss has a graph in this step
            # the graph is kept until the step ends so that a non-finite gradient can be traced
            # to its task (MultiTask's check_finite)
            ctx.objective.precision.backward(total, retain_graph=ctx.objective.check_finite)
