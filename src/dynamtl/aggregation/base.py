"""How the weighted task gradients become the gradient of a step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from dynamtl._helpers import ArgumentsRepr, check_task_arguments
from dynamtl.aggregation._solvers import combine_rows, cross_gramian, gramian, rank_tolerance
from dynamtl.context import Gradients, StepContext, combine_gradients
from dynamtl.facts import Facts
from dynamtl.tasks import Tasks


class Aggregation(ArgumentsRepr, nn.Module):
    """Turns the weights λ of a step into gradients in every parameter's ``.grad``.

    Gradients are *accumulated* into ``.grad`` as ``loss.backward()`` does, so gradient
    accumulation over several calls works; zero them between optimizer steps. An
    aggregation with state (running averages...) keeps it in buffers or extra state so that
    ``state_dict()`` saves it. ``needs_representation``: whether it works on the gradients of
    the shared representation (``MultiTask(..., representation=...)`` must name it).

    ``last_weights`` (set by every step): the weights αₖ the aggregation gave the weighted
    task gradients λₖ∇Lₖ in its last step, shape ``[T]``, so that the update of the shared
    parameters was Σₖ αₖ λₖ ∇Lₖ (1 for every task with :class:`Sum`); :class:`MultiTask`
    reports them in :attr:`StepInfo.aggregation_weights`, with αₖ = 0 for a task absent from
    the step (its loss has no graph: it contributed nothing). (MoCo's update combines its
    *tracked* estimates of the task gradients: it reports the weights it gives those.)
    ``facts``: the method's name, paper, cost and options (:class:`~dynamtl.facts.Facts`),
    read by the registry. The ``repr`` shows the constructor's arguments.

    ``batches_per_step`` (from the facts; 1 by default): independent training mini-batches
    one step reads; ``MultiTask.step(batch, extra_batches=[...])`` takes the others.
    """

    needs_representation = False
    facts: ClassVar[Facts | None] = None
    last_weights: Tensor | None = None
    task_names: tuple[str, ...] | None = None

    @property
    def batches_per_step(self) -> int:
        """Independent training mini-batches per step (the facts' ``batches_per_step``)."""
        return self.facts.batches_per_step if self.facts is not None else 1

    def bind(self, tasks: Tasks | Sequence[str]) -> Aggregation:
        """Check the options that depend on the tasks (a preference with one value per task)
        against the task names, for this aggregation and those it composes (CR-MOGM's,
        OnRepresentation's), and fix the task names; returns ``self``. :class:`~dynamtl.MultiTask`
        binds its aggregation, and a run is bound when it is planned, so a wrong length is
        refused before the first step. ``ValueError`` when it is already bound to other task
        names: its state (tracked gradients, smoothed weights) is per task, as a weighting's."""
        names = tasks.names if isinstance(tasks, Tasks) else tuple(tasks)
        if self.task_names is not None and names != self.task_names:
            raise ValueError(
                f"{type(self).__name__} is bound to tasks {list(self.task_names)}, not {list(names)}: use one "
                "aggregation per task set"
            )
        check_task_arguments(self, names)
        for child in self.children():
            if isinstance(child, Aggregation):
                child.bind(names)
        self.task_names = names
        return self

    def backward(self, ctx: StepContext, weights: Tensor, regularizer: Tensor | None) -> None:
        raise NotImplementedError


class GradientAggregation(Aggregation):
    """An aggregation defined on the matrix of weighted task gradients of the shared parameters.

    Row k of the Jacobian J (shape ``[T, D]``) is λₖ ∇θₛ Lₖ, flattened over the *shared*
    parameters θₛ (those that more than one task's loss depends on). :meth:`combine` maps J
    to one vector of length D; task-specific parameters always receive λₖ ∇Lₖ of their own
    task. The per-task gradients come from :meth:`StepContext.task_gradients`, computed once
    per step and shared with the weighting.

    A subclass defines :meth:`combine`, or, when its update is a combination Σₖ αₖ Jₖ of
    the rows, :meth:`row_weights` (and ``combine`` follows). ``last_weights`` are then the
    α of :meth:`row_weights` exactly; for an aggregation that defines only ``combine`` they
    are the least-squares coefficients α = argmin ‖Jᵀα − d‖ (the minimum-norm one where the
    rows are dependent), exact whenever d lies in the span of the rows and the rows are
    independent, and otherwise the combination of the rows closest to d (GradDrop).

    An aggregation that reads ``batches_per_step`` b > 1 mini-batches defines
    :meth:`sampled_row_weights` instead: the weights come from the rows of the b − 1 extra
    batches and this batch's, and the update is Σₖ αₖ Jₖ of this batch's rows.
    ``rows_across_batches``: the method combines rows of different batches or steps, which
    only gradients of the parameters allow (not those of a representation, whose rows
    belong to a batch's samples): :class:`OnRepresentation` and :class:`CRMOGM` refuse it.
    """

    rows_across_batches: ClassVar[bool] = False

    def combine(self, jacobian: Tensor) -> Tensor:
        """The aggregated gradient (shape ``[D]``) of the weighted task gradients ``jacobian``."""
        if type(self).row_weights is GradientAggregation.row_weights:
            raise NotImplementedError(f"{type(self).__name__} defines neither combine nor row_weights")
        return combine_rows(self.row_weights(jacobian), jacobian)

    def row_weights(self, jacobian: Tensor) -> Tensor:
        """α (shape ``[T]``, float64 on the CPU) such that the update is Σₖ αₖ Jₖ."""
        raise NotImplementedError(f"{type(self).__name__} defines no row_weights: its update is not a row combination")

    def sampled_row_weights(self, jacobian: Tensor, others: Sequence[Tensor]) -> Tensor:
        """α (shape ``[T]``, float64 on the CPU) for this batch's rows ``jacobian`` and the
        rows ``others`` (same shape) of the ``batches_per_step − 1`` extra batches."""
        raise NotImplementedError(f"{type(self).__name__} reads one batch per step: use row_weights")

    def combine_shared(self, jacobian: Tensor, blocks: Sequence[tuple[str, int]]) -> tuple[Tensor, Tensor]:
        """``(α, d)`` for the step's rows ``jacobian``, whose columns are the shared parameters
        ``blocks`` (name, number of elements) in order: :meth:`weights_and_update` by default;
        an aggregation that treats parameters by layer overrides it (GradVac) and says so in
        :attr:`by_layer`, and one that wraps another passes the blocks on (CR-MOGM)."""
        return self.weights_and_update(jacobian)

    @property
    def by_layer(self) -> bool:
        """Whether the update depends on the layer each column belongs to (GradVac with
        ``granularity="layer"``): it needs the parameters' blocks, which the gradients of a
        representation do not have (:class:`OnRepresentation` refuses it)."""
        return False

    def weights_and_update(self, jacobian: Tensor) -> tuple[Tensor, Tensor]:
        """``(α, d)``: the row weights and the update of ``jacobian`` (one call of the
        method, so a random or stateful aggregation draws once)."""
        if type(self).row_weights is not GradientAggregation.row_weights:
            alpha = self.row_weights(jacobian)
            return alpha, combine_rows(alpha, jacobian)
        update = self.combine(jacobian)
        return fitted_row_weights(jacobian, update), update

    def backward(self, ctx: StepContext, weights: Tensor, regularizer: Tensor | None) -> None:
        task_grads = ctx.task_gradients()
        w = weights.detach()
        shared = shared_parameters(task_grads)
        specific = [{n: g[n] for n in g if n not in shared} for g in task_grads]
        accumulate(ctx, combine_gradients(specific, w))
        self.last_weights = torch.ones_like(w)  # no shared parameter: every task keeps its own gradient
        if shared:
            sizes = [ctx.params[n].numel() for n in shared]
            rows = w[:, None] * shared_rows(ctx, task_grads, shared)
            if self.batches_per_step > 1:
                others = [w[:, None] * shared_rows(ctx, grads, shared) for grads in ctx.extra_task_gradients()]
                alpha = self.sampled_row_weights(rows, others)
                flat = combine_rows(alpha, rows)
            else:
                alpha, flat = self.combine_shared(rows, list(zip(shared, sizes)))
            self.last_weights = alpha.to(w)
            accumulate(ctx, dict(zip(shared, flat.split(sizes))))
        weighting_backward(ctx, weights, regularizer)


def fitted_row_weights(jacobian: Tensor, update: Tensor) -> Tensor:
    """α = argmin ‖Jᵀα − d‖ (float64, CPU; minimum norm), from the Gram matrix: Gα = Jd.

    Jd is formed as G is, on rows divided by their largest entry (:func:`cross_gramian`): rows
    of size 1e30 (Jd ~ 1e60, beyond float32) or 1e-30 neither overflow nor underflow. NaN
    weights for an update that is not finite itself (an overflow, which a
    :class:`~dynamtl.MultiTask` step reports as :class:`~dynamtl.NonFiniteLossError`)."""
    j = jacobian.detach()
    if not bool(update.isfinite().all()):  # an overflow of the update: MultiTask's step reports it
        return torch.full((len(j),), torch.nan, dtype=torch.float64)
    target = cross_gramian(j, update.detach().reshape(1, -1).to(j.dtype))[:, 0]
    return torch.linalg.lstsq(gramian(j), target, rcond=rank_tolerance(j), driver="gelsd").solution


def shared_parameters(task_grads: list[Gradients]) -> list[str]:
    """Names of the parameters that the losses of at least two tasks depend on."""
    return [n for n in task_grads[0] if sum(g[n] is not None for g in task_grads) > 1]


def shared_rows(ctx: StepContext, task_grads: list[Gradients], shared: list[str]) -> Tensor:
    """The matrix ``[T, D]`` of the task gradients flattened over the parameters ``shared``
    (zeros where a task's loss does not depend on one)."""
    rows = []
    for grads in task_grads:
        pieces = []
        for name in shared:
            g = grads[name]
            pieces.append((torch.zeros_like(ctx.params[name]) if g is None else g).reshape(-1))
        rows.append(torch.cat(pieces))
    return torch.stack(rows).detach()


def accumulate(ctx: StepContext, grads: Gradients) -> None:
    """Add ``grads`` (name -> true gradient, possibly flat) into the parameters' ``.grad``
    (times the loss scale under a ``GradScaler``, as ``scaler.scale(loss).backward()`` would)."""
    for name, g in grads.items():
        if g is None:
            continue
        p = ctx.params[name]
        # float32 weights times float16 gradients
        g = ctx.objective.precision.scaled(g.detach().reshape(p.shape).to(p.dtype))
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
