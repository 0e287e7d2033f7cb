"""How the weighted task gradients become the gradient of a step."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dynamtl.context import Gradients, StepContext, combine_gradients


class Aggregation(nn.Module):
    """Turns the weights λ of a step into gradients in every parameter's ``.grad``.

    Gradients are *accumulated* into ``.grad`` as ``loss.backward()`` does, so gradient
    accumulation over several calls works; zero them between optimizer steps. An
    aggregation with state (running averages...) keeps it in buffers or extra state so that
    ``state_dict()`` saves it. ``needs_representation``: whether it works on the gradients of
    the shared representation (``MultiTask(..., representation=...)`` must name it).
    """

    needs_representation = False

    def backward(self, ctx: StepContext, weights: Tensor, regularizer: Tensor | None) -> None:
        raise NotImplementedError


class GradientAggregation(Aggregation):
    """An aggregation defined on the matrix of weighted task gradients of the shared parameters.

    Row k of the Jacobian J (shape ``[T, D]``) is λₖ ∇θₛ Lₖ, flattened over the *shared*
    parameters θₛ (those that more than one task's loss depends on). :meth:`combine` maps J
    to one vector of length D; task-specific parameters always receive λₖ ∇Lₖ of their own
    task. The per-task gradients come from :meth:`StepContext.task_gradients`, computed once
    per step and shared with the weighting.
    """

    def combine(self, jacobian: Tensor) -> Tensor:
        """The aggregated gradient (shape ``[D]``) of the weighted task gradients ``jacobian``."""
        raise NotImplementedError

    def backward(self, ctx: StepContext, weights: Tensor, regularizer: Tensor | None) -> None:
        task_grads = ctx.task_gradients()
        w = weights.detach()
        shared = shared_parameters(task_grads)
        specific = [{n: g[n] for n in g if n not in shared} for g in task_grads]
        accumulate(ctx, combine_gradients(specific, w))
        if shared:
            rows = [
                torch.cat([(w[k] * g[n] if g[n] is not None else torch.zeros_like(ctx.params[n])).reshape(-1) for n in shared])
                for k, g in enumerate(task_grads)
            ]
            flat = self.combine(torch.stack(rows))
            accumulate(ctx, dict(zip(shared, flat.split([ctx.params[n].numel() for n in shared]))))
        weighting_backward(ctx, weights, regularizer)


def shared_parameters(task_grads: list[Gradients]) -> list[str]:
    """Names of the parameters that the losses of at least two tasks depend on."""
    return [n for n in task_grads[0] if sum(g[n] is not None for g in task_grads) > 1]


def accumulate(ctx: StepContext, grads: Gradients) -> None:
    """Add ``grads`` (name -> true gradient, possibly flat) into the parameters' ``.grad``
    (times the loss scale under a ``GradScaler``, as ``scaler.scale(loss).backward()`` would)."""
    for name, g in grads.items():
        if g is None:
            continue
        p = ctx.params[name]
        g = ctx.objective.precision.scaled(g.detach().reshape(p.shape).to(p.dtype))  # float32 weights times float16 gradients
        p.grad = g.clone() if p.grad is None else p.grad + g


def weighting_backward(ctx: StepContext, weights: Tensor, regularizer: Tensor | None) -> None:
    """Gradients for the weighting's own parameters (e.g. Uncertainty's log-variances) from
    Σ λᵢ·stop_grad(Lᵢ) + regularizer, when the model's gradients were formed another way."""
    if not weights.requires_grad and regularizer is None:
        return
    total = (weights * ctx.losses.detach()).sum()
    if regularizer is not None:
        total = total + regularizer
    if total.requires_grad:
        ctx.objective.precision.backward(total, through_model=False)
