"""Any gradient aggregation on the gradients of the shared representation instead of the
shared parameters (the MGDA-UB shortcut, for every aggregation)."""

from __future__ import annotations

from torch import Tensor

from dynamtl.aggregation.base import Aggregation, GradientAggregation, weighting_backward
from dynamtl.context import StepContext


class OnRepresentation(Aggregation):
    r"""Run ``aggregation`` on the rows λₖ∇_Z Lₖ of the shared representation Z, then
    back-propagate its update through the shared layers.

    Z is the output of the module named by ``MultiTask(..., representation="NAME")``, which
    every task head reads. With the rows Rₖ = λₖ∇_Z Lₖ (one backward pass per task through
    the heads only, cheap next to the trunk) and the aggregation's update d_Z of R, one
    backward pass of

    .. math::

        S = \sum_k \lambda_k L_k + \Big\langle Z,\; d_Z - \sum_k R_k \Big\rangle
        \quad (\text{the second factor held constant})

    gives the shared parameters θₛ (upstream of Z) (∂Z/∂θₛ)ᵀ d_Z, the update back-propagated
    from Z, and each task head its own λₖ∇Lₖ. For an aggregation whose update is a
    combination Σₖ αₖ Rₖ of the rows (all but GradDrop), the shared parameters get
    Σₖ αₖλₖ∇θₛLₖ with α computed from the representation's rows: the MGDA-UB scheme of
    Sener & Koltun (NeurIPS 2018), Section 3.3, for any aggregation (``OnRepresentation(MGDA())``
    differs from ``MGDA(upper_bound=True)`` only on the heads, which get λₖ∇Lₖ here and
    α*ₖλₖ∇Lₖ there). With GradDrop the sign masks are drawn on Z, as its paper does (on
    the activations of one layer).

    Cost: the T backward passes per task go through the heads only, and one backward pass
    through the whole model: much cheaper than the T full per-task passes of the default
    when the trunk dominates. The weights α (the least-squares ones for GradDrop) are in
    ``last_weights``.

    Args:
        aggregation: the gradient aggregation to run on the representation's rows.

    Raises ``ValueError`` under DDP (each process would aggregate the rows of its own
    samples only; use ``MGDA(upper_bound=True)``, which averages their Gram matrices).
    """

    needs_representation = True

    def __init__(self, aggregation: GradientAggregation) -> None:
        super().__init__()
        if not isinstance(aggregation, GradientAggregation):
            raise TypeError(
                "OnRepresentation runs a gradient aggregation (PCGrad, MGDA, UPGrad...) on the representation's "
                f"gradients, not {type(aggregation).__name__}"
            )
        if aggregation.rows_across_batches:
            raise ValueError(
                f"OnRepresentation cannot run {type(aggregation).__name__}: it combines task gradients of different "
                "batches or steps, and the representation's gradients belong to one batch's samples; use "
                f"{type(aggregation).__name__} on the shared parameters"
            )
        if aggregation.by_layer:
            raise ValueError(
                f"OnRepresentation cannot run {aggregation!r}: it treats the shared parameters layer by layer, and "
                "the representation's gradients have no layers; give it its whole-model granularity, or run it on "
                "the shared parameters"
            )
        self.aggregation = aggregation

    def backward(self, ctx: StepContext, weights: Tensor, regularizer: Tensor | None) -> None:
        if ctx.objective.replicas.distributed:
            raise ValueError(
                f"OnRepresentation({type(self.aggregation).__name__}) would aggregate each process's own samples "
                "under DDP: run it in one process, or use MGDA(upper_bound=True)"
            )
        w = weights.detach()
        rows = w[:, None].to(ctx.losses.dtype) * ctx.representation_gradients()
        alpha, update = self.aggregation.weights_and_update(rows)
        self.last_weights = alpha.to(w)
        correction = (update - rows.sum(0)).split([z.numel() for z in ctx.representation])
        surrogate = (w * ctx.losses).sum()
        for z, piece in zip(ctx.representation, correction):
            surrogate = surrogate + (z * piece.reshape(z.shape).to(z.dtype)).sum()
        # the graph is kept until the step ends so that a non-finite gradient can be traced to
        # its task (MultiTask's check_finite), as Sum keeps it
        ctx.objective.precision.backward(surrogate, retain_graph=ctx.objective.check_finite)
        weighting_backward(ctx, weights, regularizer)
