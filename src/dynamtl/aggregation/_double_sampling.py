"""The common part of the aggregations whose task weights take projected steps on the
cross-Gram matrix of two independent mini-batches (SDMGrad, MoDo)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from dynamtl.aggregation._solvers import double_sampled_gramian, simplex_step
from dynamtl.aggregation.base import GradientAggregation


class DoubleSampling(GradientAggregation):
    """Weights w on the simplex, kept from step to step, moved by :meth:`descend` on the
    cross-Gram matrix A = G₁G₂ᵀ of two extra mini-batches' rows; the update combines this
    batch's rows with :meth:`step_weights` of them.

    ``double_sampling=False`` is the single-batch variant of the methods' official code: A is
    the Gram matrix GGᵀ of this batch's rows, which also form the update (one batch per
    step; the weights then carry the bias that double sampling removes).

    Rows that are zero in this batch are left out (:func:`simplex_step`); w is saved in the
    state dict and restarts at 1/T when the number of tasks changes.
    """

    rows_across_batches: ClassVar[bool] = True

    def __init__(self, double_sampling: bool, normalize: bool) -> None:
        super().__init__()
        self.double_sampling = bool(double_sampling)
        self.normalize = bool(normalize)
        self.weights: Tensor | None = None

    @property
    def batches_per_step(self) -> int:
        return 3 if self.double_sampling else 1

    def descend(self, weights: Tensor, cross: Tensor) -> Tensor:
        """The new weights (on the simplex) of the present tasks from ``weights`` and A."""
        raise NotImplementedError

    def step_weights(self, weights: Tensor) -> Tensor:
        """The weights of this batch's present rows from the new ``weights`` (default: them)."""
        return weights

    def sampled_row_weights(self, jacobian: Tensor, others: Sequence[Tensor]) -> Tensor:
        present, cross = double_sampled_gramian(type(self).__name__, jacobian, others, self.normalize)
        num = len(jacobian)
        if self.weights is None or len(self.weights) != num:
            self.weights = torch.full((num,), 1.0 / num, dtype=torch.float64)
        self.weights, step = simplex_step(self.weights, present, lambda w: self.descend(w, cross))
        if present.any():
            step[present] = self.step_weights(step[present])
        return step

    def row_weights(self, jacobian: Tensor) -> Tensor:
        name = type(self).__name__
        if self.double_sampling:
            raise ValueError(
                f"{name} reads three mini-batches per step: call sampled_row_weights(J, [J1, J2]) with the rows of "
                "two independent extra batches, or MultiTask.step(batch, extra_batches=[batch_1, batch_2]); "
                f"{name}(double_sampling=False) is the single-batch variant"
            )
        return self.sampled_row_weights(jacobian, [jacobian, jacobian])

    def get_extra_state(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"]
