"""The one place where a training step happens: forward, weighting, aggregation, backward, step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dynamtl.aggregation.base import Aggregation
from dynamtl.aggregation.sum import Sum
from dynamtl.context import StepContext
from dynamtl.lookahead import LookAhead
from dynamtl.objective import Objective, capture_rng
from dynamtl.tasks import Tasks
from dynamtl.weighting.base import Weighting
from dynamtl.weighting.equal import Equal


class NonFiniteLossError(FloatingPointError):
    """A task loss was NaN or infinite; the message names the task(s) and the step."""


@dataclass
class StepInfo:
    """What one step did: ``losses`` and ``weights`` (detached, task order), wall ``seconds``,
    and ``aggregation_weights``: the weights αₖ the aggregation gave the weighted task
    gradients λₖ∇Lₖ (the shared parameters moved along Σₖ αₖλₖ∇Lₖ; 1 with :class:`Sum`),
    ``None`` for an aggregation that does not report them."""

    names: tuple[str, ...]
    losses: Tensor
    weights: Tensor
    seconds: float
    aggregation_weights: Tensor | None = None

    def as_dict(self) -> dict[str, float]:
        """Flat ``{"loss/task": …, "weight/task": …, "aggregation_weight/task": …,
        "seconds": …}`` for logging."""
        out = {f"loss/{n}": float(v) for n, v in zip(self.names, self.losses)}
        out.update({f"weight/{n}": float(v) for n, v in zip(self.names, self.weights)})
        if self.aggregation_weights is not None:
            out.update({f"aggregation_weight/{n}": float(v) for n, v in zip(self.names, self.aggregation_weights)})
        out["seconds"] = self.seconds
        return out


class MultiTask:
    """Trains ``model`` on ``tasks`` with a task weighting and a gradient aggregation.

    Args:
        model: returns ``{task: prediction}`` (see :class:`~dynamtl.Tasks`); under torchrun,
            its :class:`~torch.nn.parallel.DistributedDataParallel` wrapper, each process
            with an equal shard of the global batch: every method then takes the step one
            process would take on the global batch (see :mod:`dynamtl.distributed`).
        tasks: the tasks and their losses.
        optimizer: the model's optimizer; required by :meth:`step` and by weightings that
            look ahead (Auto-Lambda, HydaLearn). Learnable parameters of the weighting
            (Uncertainty's log-variances) are added to it as their own parameter group,
            without weight decay, if it lacks them.
        weighting: who decides λ (default :class:`~dynamtl.Equal`).
        aggregation: how the λ-weighted task gradients are combined (default
            :class:`~dynamtl.Sum`, one backward pass).
        check_finite: raise :class:`NonFiniteLossError` on a NaN/inf loss (one device
            synchronisation per step).
        representation: the name of the submodule whose output every head reads, for
            aggregations that can work on the gradients of that shared representation
            instead of the shared parameters (``MGDA(upper_bound=True)``).

    Use :meth:`step` for the whole step, or :meth:`backward` to leave ``optimizer.step()``
    to your loop (gradient clipping, ``GradScaler``, schedulers). Call :meth:`end_epoch`
    after every epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Tasks,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        weighting: Weighting | None = None,
        aggregation: Aggregation | None = None,
        check_finite: bool = True,
        representation: str | None = None,
    ) -> None:
        self.objective = Objective(model, tasks, representation)
        self.tasks = tasks
        self.optimizer = optimizer
        self.weighting = (weighting or Equal()).bind(tasks)
        self.aggregation = aggregation or Sum()
        self.check_finite = check_finite
        self.steps = 0
        first = next(iter(self.objective.params.values()))
        self.weighting.to(device=first.device, dtype=first.dtype)
        self.aggregation.to(device=first.device, dtype=first.dtype)
        name = type(self.weighting).__name__
        if self.weighting.needs_optimizer and optimizer is None:
            raise ValueError(
                f"{name} needs the model's optimizer: MultiTask(model, tasks, optimizer, weighting=...)"
            )
        if self.aggregation.needs_representation and representation is None:
            raise ValueError(
                f"{type(self.aggregation).__name__} needs the shared representation: MultiTask(..., "
                f"representation='NAME') with the name of the submodule whose output the task heads read"
            )
        needs_lookahead = self.weighting.needs_lookahead and optimizer is not None
        self.lookahead = LookAhead(optimizer, self.objective.params) if needs_lookahead else None
        if optimizer is not None:
            self._give_weighting_parameters_to(optimizer)

    def _give_weighting_parameters_to(self, optimizer: torch.optim.Optimizer) -> None:
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [p for p in self.weighting.model_optimizer_parameters() if id(p) not in owned]
        if missing:
            optimizer.add_param_group({"params": missing, "weight_decay": 0.0})

    def backward(self, batch: Any, meta_batch: Any = None) -> StepInfo:
        """Compute the step's gradients into ``.grad`` (accumulating); no optimizer step."""
        start = time.perf_counter()
        if self.weighting.needs_meta_batch and meta_batch is None:
            raise ValueError(
                f"{type(self.weighting).__name__} needs a meta batch: call step(batch, meta_batch=...) "
                "with a batch from a held-out split or a reshuffled training loader"
            )
        rng = capture_rng(self.objective.device)
        task_losses = self.objective.task_losses(batch)
        ctx = StepContext(
            self.objective,
            batch,
            meta_batch,
            task_losses,
            rng,
            self.steps,
            self.optimizer,
            self.lookahead,
            self.objective.representation,
        )
        losses = ctx.losses
        if self.check_finite:
            self._check_finite(losses)
        weights = self.weighting.weights(ctx)
        self.aggregation.last_weights = None
        self.aggregation.backward(ctx, weights, self.weighting.regularizer())
        self.weighting.after_backward(ctx)
        self.objective.representation = []  # free Z of this step
        self.steps += 1
        alpha = self.aggregation.last_weights
        return StepInfo(
            self.tasks.names, losses.detach(), weights.detach(), time.perf_counter() - start,
            None if alpha is None else alpha.detach(),
        )

    def step(self, batch: Any, meta_batch: Any = None) -> StepInfo:
        """``zero_grad``, :meth:`backward` and ``optimizer.step()``."""
        if self.optimizer is None:
            raise ValueError("step() needs the optimizer: MultiTask(model, tasks, optimizer, ...), or call backward()")
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        info = self.backward(batch, meta_batch)
        self.optimizer.step()
        info.seconds = time.perf_counter() - start
        return info

    def end_epoch(self) -> None:
        self.weighting.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        """The weighting's and aggregation's state and the step count (the model and
        optimizer save their own)."""
        return {
            "weighting": self.weighting.state_dict(),
            "aggregation": self.aggregation.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weighting.load_state_dict(state["weighting"])
        self.aggregation.load_state_dict(state["aggregation"])
        self.steps = int(state["steps"])

    def _check_finite(self, losses: Tensor) -> None:
        values = losses.detach()
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            names = [n for n, b in zip(self.tasks.names, bad.tolist()) if b]
            values = {n: float(values[self.tasks.names.index(n)]) for n in names}
            raise NonFiniteLossError(
                f"non-finite loss in step {self.steps + 1} (1-based) for task(s) {values}: lower the learning rate, "
                "check the inputs and targets of that task, or clip gradients"
            )
