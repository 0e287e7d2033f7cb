"""The one place where a training step happens: forward, weighting, aggregation, backward, step."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dynamtl._helpers import check_model_arguments, raise_all
from dynamtl.aggregation.base import Aggregation
from dynamtl.aggregation.sum import Sum
from dynamtl.context import StepContext
from dynamtl.lookahead import LookAhead
from dynamtl.nonfinite import NonFiniteLossError, check_losses
from dynamtl.objective import Objective, capture_rng
from dynamtl.precision import GradientOverflow, Precision
from dynamtl.tasks import Tasks
from dynamtl.weighting.base import Weighting
from dynamtl.weighting.equal import Equal

__all__ = ["MultiTask", "NonFiniteLossError", "StepGuard", "StepInfo"]


@dataclass
class StepInfo:
    """What one step did: ``losses`` and ``weights`` (detached, task order), wall ``seconds``;
    ``skipped``: the scaled gradients overflowed and the step was skipped (only with a
    ``GradScaler``); ``aggregation_weights``: the weights αₖ the aggregation gave the weighted
    task gradients λₖ∇Lₖ (the shared parameters moved along Σₖ αₖλₖ∇Lₖ; 1 with :class:`Sum`;
    0 for a task absent from the step, whatever the aggregation), ``None`` for an aggregation
    that does not report them. ``weights`` are the weighting's λ as it holds them, absent
    tasks included."""

    names: tuple[str, ...]
    losses: Tensor
    weights: Tensor
    seconds: float
    skipped: bool = False
    aggregation_weights: Tensor | None = None

    def as_dict(self) -> dict[str, float]:
        """Flat ``{"loss/task": …, "weight/task": …, "aggregation_weight/task": …,
        "seconds": …}`` for logging; a skipped step has ``"skipped": True`` and no weights."""
        out = {f"loss/{n}": float(v) for n, v in zip(self.names, self.losses)}
        if self.skipped:
            out["skipped"] = True
        else:
            out.update({f"weight/{n}": float(v) for n, v in zip(self.names, self.weights)})
            if self.aggregation_weights is not None:
                alpha = self.aggregation_weights
                out.update({f"aggregation_weight/{n}": float(v) for n, v in zip(self.names, alpha)})
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
        check_finite: raise :class:`NonFiniteLossError` on a NaN/inf loss or gradient in any
            pass of the step (training, meta, perturbation, look-ahead; one device
            synchronisation per pass), after putting back everything the step changed: the
            model's parameters, buffers and ``.grad``, the optimizer (not stepped) and the
            weighting's and aggregation's state are bit for bit as before the step (see
            :class:`StepGuard`).
        representation: the name of the submodule whose output every head reads, for
            aggregations that can work on the gradients of that shared representation
            instead of the shared parameters (``MGDA(upper_bound=True)``).
        scaler: a ``torch.amp.GradScaler`` for float16 mixed precision (see below).

    Mixed precision: run :meth:`step` (or :meth:`backward`) inside ``torch.autocast`` as
    in any AMP loop; the model's forward passes run under it, the rest of the step in
    float32 (:mod:`dynamtl.precision`). With ``scaler``, every backward pass is taken of
    the scaled losses and every gradient that a weighting or aggregation reads is unscaled
    first. A step whose scaled gradients hold an inf or NaN is skipped the GradScaler way:
    the weighting's and aggregation's state is put back as it was, ``.grad`` is left
    non-finite so that ``scaler.step`` skips the optimizer step and ``scaler.update``
    lowers the scale, and :attr:`StepInfo.skipped` is set. :meth:`step` calls
    ``scaler.step(optimizer)`` and ``scaler.update()`` itself; after :meth:`backward`
    your loop does, exactly as after ``scaler.scale(loss).backward()``.

    Use :meth:`step` for the whole step, or :meth:`backward` to leave ``optimizer.step()``
    to your loop (gradient clipping, ``GradScaler``, schedulers). Call :meth:`end_epoch`
    after every epoch.

    Whose parameters: the model's trainable parameters that the optimizer does not own
    stay where they are (as in ``optimizer.step()``); an optimizer that owns none of them
    is refused. A weighting or an aggregation object belongs to one ``MultiTask`` (its
    state, λ for instance, is that run's). Learnable parameters of the weighting are added
    to the optimizer as a new parameter group: build a learning-rate scheduler *after*
    ``MultiTask``, or the construction fails with that fix.

    Precision: the weighting's and aggregation's state, the weights λ, hypergradients and
    gains are float32 for a float16 or bfloat16 model (float64 for a float64 one).
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
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        _check_kind(model, nn.Module, "model", "an nn.Module returning {task: prediction}")
        _check_kind(tasks, Tasks, "tasks", "dm.Tasks({'name': loss_fn, ...})")
        if optimizer is not None:
            _check_kind(optimizer, torch.optim.Optimizer, "optimizer", "a torch.optim.Optimizer instance")
        if weighting is not None:
            _check_kind(weighting, Weighting, "weighting", "a weighting instance such as dm.AutoLambda()")
        if aggregation is not None:
            _check_kind(aggregation, Aggregation, "aggregation", "an aggregation instance such as dm.PCGrad()")
        if scaler is not None:
            _check_kind(scaler, torch.amp.GradScaler, "scaler", "a torch.amp.GradScaler instance")
        self.objective = Objective(model, tasks, representation)
        self.objective.check_finite = check_finite
        self.precision = self.objective.precision = Precision(scaler, self.objective.device.type)
        self.tasks = tasks
        self.optimizer = optimizer
        self.weighting, self.aggregation = _claim_and_bind((weighting or Equal(), aggregation or Sum()), self, tasks)
        for method in (self.weighting, self.aggregation):
            check_model_arguments(method, tuple(self.objective.params))
        self.check_finite = check_finite
        self.steps = 0
        first = next(iter(self.objective.params.values()))
        state_dtype = first.dtype if first.dtype == torch.float64 else torch.float32
        self.weighting.to(device=first.device, dtype=state_dtype)
        self.aggregation.to(device=first.device, dtype=state_dtype)
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
        if optimizer is not None:
            _check_ownership(optimizer, self.objective.params)
        needs_lookahead = self.weighting.needs_lookahead
        self.lookahead = (
            LookAhead(optimizer, self.objective.params) if needs_lookahead and optimizer is not None else None
        )
        if optimizer is not None:
            self._give_weighting_parameters_to(optimizer)

    def _give_weighting_parameters_to(self, optimizer: torch.optim.Optimizer) -> None:
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [p for p in self.weighting.model_optimizer_parameters() if id(p) not in owned]
        if not missing:
            return
        if any("initial_lr" in group for group in optimizer.param_groups):
            raise ValueError(
                f"{type(self.weighting).__name__} has parameters for the model's optimizer, which MultiTask adds "
                "as a new parameter group, but a learning-rate scheduler was already built on that optimizer "
                "and would not know the group: build the scheduler after MultiTask(...)"
            )
        optimizer.add_param_group({"params": missing, "weight_decay": 0.0})

    def backward(
        self, batch: Any, meta_batch: Any = None, *, micro_batches: int = 1, extra_batches: Sequence[Any] = ()
    ) -> StepInfo:
        """Compute the step's gradients into ``.grad`` (accumulating); no optimizer step.

        Gradient accumulation: call it on each of k micro-batches with ``micro_batches=k``,
        then step the optimizer once; each call adds 1/k of its gradient to ``.grad``, so
        ``.grad`` holds their mean. For a loss-level weighting with :class:`~dynamtl.Sum`
        that is exactly the gradient of one step on the concatenated batch (equal-sized
        micro-batches, losses that are means). Every other method decides per micro-batch:
        gradient aggregations combine each micro-batch's task gradients (the mean of the k
        aggregated gradients, not the aggregation of the mean), and a weighting that updates
        its state per call (Auto-Lambda's λ, GradNorm's w, DWA's history) does so k times
        per optimizer step, each look-ahead emulating a step from that micro-batch's
        gradient alone. A weighting that assumes one optimizer step per call
        (``needs_step_per_backward``: Auto-Lambda's ``order="lagged"``) is refused with
        ``micro_batches > 1``.

        ``extra_batches``: for an aggregation that reads ``batches_per_step`` b > 1
        independent mini-batches per step (SDMGrad, MoDo: their weights come from products
        of task gradients of different batches), the b − 1 others, drawn from the training
        data independently of ``batch`` (another shuffled loader, or the next batches of
        one); ``batch`` stays the batch whose losses are reported, whose gradients the update
        combines and whose forward pass updates BatchNorm statistics. Any other aggregation
        takes none. A wrong number raises ``ValueError`` saying how many to give.

        Raises :class:`NonFiniteLossError` (with ``check_finite``) after restoring the state
        of before the call; errors raised by the model or a loss name the task and the pass."""
        start = time.perf_counter()
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        if micro_batches > 1 and self.weighting.needs_step_per_backward:
            raise ValueError(
                f"{self.weighting!r} takes the optimizer's step after each backward() as its virtual step, "
                "which gradient accumulation breaks: use it without micro_batches (for AutoLambda, order='lookahead')"
            )
        self._check_extra_batches(extra_batches)
        if self.weighting.needs_meta_batch and meta_batch is None:
            raise ValueError(
                f"{type(self.weighting).__name__} needs a meta batch: call step(batch, meta_batch=...) "
                "with a batch from a held-out split or a reshuffled training loader"
            )
        scaled = self.precision.scaler is not None
        guard = StepGuard(self) if self.check_finite or scaled else None
        with self.precision.step(self.objective.device, micro_batches):
            try:
                info = self._backward(batch, meta_batch, tuple(extra_batches))
            except NonFiniteLossError as error:
                error.step = self.steps + 1
                error.cause = "; ".join(c for c in (error.cause, self.weighting.explain_failure()) if c)
                if guard is not None:
                    guard.restore()
                raise
            except GradientOverflow as overflow:
                assert guard is not None
                return self._skip(guard, overflow, start)
            finally:
                self.objective.representation = []  # free Z of this step
        self.steps += 1
        info.seconds = time.perf_counter() - start
        return info

    def _check_extra_batches(self, extra_batches: Sequence[Any]) -> None:
        """``ValueError`` unless ``extra_batches`` is a sequence of as many batches as the
        aggregation reads beyond ``batch``."""
        needed = self.aggregation.batches_per_step - 1
        if not isinstance(extra_batches, (list, tuple)):
            raise TypeError(
                f"extra_batches must be a list of mini-batches, got {type(extra_batches).__name__}: "
                "step(batch, extra_batches=[batch_2, batch_3])"
            )
        if len(extra_batches) == needed:
            return
        name = type(self.aggregation).__name__
        if needed == 0:
            raise ValueError(
                f"{name} reads one mini-batch per step, but {len(extra_batches)} extra batch(es) were given: "
                "drop extra_batches (they are for aggregations such as SDMGrad and MoDo)"
            )
        raise ValueError(
            f"{name} reads {needed + 1} independent mini-batches per step (its weights come from task gradients "
            f"of different batches), but {len(extra_batches)} extra batch(es) were given: call "
            f"step(batch, extra_batches=[...]) with {needed} more training mini-batches drawn independently of "
            "batch (e.g. from a second shuffled DataLoader); the dynamtl trainer and the Lightning module draw them"
        )

    def _skip(self, guard: StepGuard, overflow: GradientOverflow, start: float) -> StepInfo:
        """A step whose scaled gradients overflowed, skipped the GradScaler way: everything
        is put back as before the step, then ``.grad`` is made infinite so that
        ``scaler.step`` skips the optimizer step and ``scaler.update`` lowers the scale."""
        guard.restore()
        for p in self.objective.params.values():
            p.grad = torch.full_like(p, float("inf"))
        losses = overflow.losses if overflow.losses is not None else torch.full((len(self.tasks),), float("nan"))
        nan = torch.full_like(losses, float("nan"))
        return StepInfo(self.tasks.names, losses, nan, time.perf_counter() - start, skipped=True)

    def _backward(self, batch: Any, meta_batch: Any, extra_batches: tuple[Any, ...]) -> StepInfo:
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
            extra_batches,
        )
        losses = ctx.losses
        if self.check_finite and self.objective.replicas.distributed:
            check_losses(losses, self.tasks.names, "training")  # the global batch's: same decision everywhere
        try:
            weights = self.weighting.weights(ctx)
            if self.check_finite:
                check_losses(weights, self.tasks.names, f"{type(self.weighting).__name__} weighting", "weight")
            self.aggregation.last_weights = None
            self.aggregation.backward(ctx, weights, self.weighting.regularizer())
            self.precision.check([p.grad for p in ctx.params.values()])  # an overflow (with a scaler)
        except GradientOverflow as overflow:
            overflow.losses = losses.detach()
            raise
        ctx.check_combined_gradient(
            [p.grad for p in ctx.params.values()], f"{type(self.aggregation).__name__} aggregation"
        )
        self.weighting.after_backward(ctx)
        alpha = self.aggregation.last_weights
        if alpha is not None:  # an absent task contributed nothing: its reported weight is 0
            alpha = torch.where(torch.tensor(ctx.present, device=alpha.device), alpha.detach(), torch.zeros_like(alpha))
            self.aggregation.last_weights = alpha
        return StepInfo(
            self.tasks.names, losses.detach(), weights.detach(), 0.0,
            aggregation_weights=None if alpha is None else alpha.detach(),
        )

    def step(self, batch: Any, meta_batch: Any = None, *, extra_batches: Sequence[Any] = ()) -> StepInfo:
        """``zero_grad``, :meth:`backward` and ``optimizer.step()`` (``extra_batches``: see
        :meth:`backward`)."""
        if self.optimizer is None:
            raise ValueError("step() needs the optimizer: MultiTask(model, tasks, optimizer, ...), or call backward()")
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        info = self.backward(batch, meta_batch, extra_batches=extra_batches)
        if self.precision.scaler is None:
            self.optimizer.step()
        else:
            self.precision.scaler.step(self.optimizer)
            self.precision.scaler.update()
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



class StepGuard:
    """What a step may change before ``optimizer.step()``, kept so that it can be put back
    bit for bit: the model's buffers (BatchNorm statistics of the training forward pass),
    the parameters' ``.grad`` (gradient accumulation), the weighting's and the aggregation's
    state (λ, their own optimizers, random generators, histories) and the step count.

    :class:`MultiTask` takes one at the start of every step when ``check_finite`` is on and
    calls :meth:`restore` when a pass of the step is not finite, before raising; the
    parameters and the model's optimizer are untouched because the optimizer has not
    stepped. A loop that skips steps for another reason (a ``GradScaler`` that found
    infinite gradients) can restore the same way.
    """

    def __init__(self, mtl: MultiTask) -> None:
        self.mtl = mtl
        module = mtl.objective.module
        self.buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
        self.grads = {
            name: None if p.grad is None else p.grad.detach().clone() for name, p in module.named_parameters()
        }
        self.weighting = _clone_tree(mtl.weighting.state_dict())
        self.aggregation = _clone_tree(mtl.aggregation.state_dict())
        self.steps = mtl.steps

    def restore(self) -> None:
        """Put everything back as it was when the guard was taken."""
        module = self.mtl.objective.module
        with torch.no_grad():
            for name, b in module.named_buffers():
                if name in self.buffers:
                    b.copy_(self.buffers[name])
        for name, p in module.named_parameters():
            if name in self.grads:
                p.grad = self.grads[name]
        self.mtl.weighting.load_state_dict(self.weighting)
        self.mtl.aggregation.load_state_dict(self.aggregation)
        self.mtl.steps = self.steps


def _clone_tree(value: Any) -> Any:
    """``value`` with every tensor in its dicts, lists and tuples cloned (others shared)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, Mapping):
        return type(value)((k, _clone_tree(v)) for k, v in value.items())  # type: ignore[call-arg]
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tree(v) for v in value)
    return value


def _check_kind(value: Any, kind: type, what: str, expected: str) -> None:
    """``TypeError`` naming what ``value`` is when it is not an instance of ``kind`` (a class
    given for an instance included)."""
    if isinstance(value, kind):
        return
    given = f"the class {value.__name__} (not an instance of it)" if isinstance(value, type) else type(value).__name__
    raise TypeError(f"MultiTask's {what} must be {expected}, got {given}")


_OWNERS: weakref.WeakKeyDictionary[nn.Module, weakref.ReferenceType[Any]] = weakref.WeakKeyDictionary()


def _claim_and_bind(methods: Sequence[Any], owner: object, tasks: Tasks | Sequence[str]) -> list[Any]:
    """``methods`` (a weighting and an aggregation) claimed for ``owner`` (see :func:`_claim`)
    and bound to ``tasks``; every option of both that does not fit the tasks is named at
    once (one ``OptionsError`` when there are several)."""
    bound, problems = [], []
    for method in methods:
        try:
            bound.append(_claim(method, owner).bind(tasks))
        except (TypeError, ValueError) as error:
            problems.append(error)
    raise_all(problems)
    return bound


def _claim(method: nn.Module, owner: object) -> Any:
    """``method``, and every weighting or aggregation inside it (the inner aggregation of
    CR-MOGM or OnRepresentation), recorded as belonging to ``owner`` (a MultiTask or a
    MultiTaskModule); ``ValueError`` if another live owner has one of them: a method object
    holds the state (λ, histories, tracked gradients, random streams) of one run."""
    parts = [m for m in method.modules() if isinstance(m, (Weighting, Aggregation))]
    for part in parts:
        held = _OWNERS.get(part)
        if held is not None and held() is not None and held() is not owner:
            gc.collect()  # an owner nobody holds any more may only wait for the cycle collector
        other = None if held is None else held()
        if other is not None and other is not owner:
            kind = type(part).__name__
            inside = "" if part is method else f" (inside {type(method).__name__})"
            raise ValueError(
                f"this {kind} object{inside} already belongs to another {type(other).__name__}, which would share "
                f"its state (λ, histories, random streams) with this {type(owner).__name__}: give each its own "
                f"{kind}(...)"
            )
    for part in parts:
        _OWNERS[part] = weakref.ref(owner)
    return method


def _release(method: nn.Module, owner: object) -> None:
    """Undo :func:`_claim` of ``method`` (and its inner methods) by ``owner``, so that the
    MultiTask ``owner`` builds can claim it."""
    for part in method.modules():
        held = _OWNERS.get(part)
        if held is not None and held() is owner:
            del _OWNERS[part]


def _check_ownership(optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter]) -> None:
    """``ValueError`` when ``optimizer`` owns none of the model's trainable parameters."""
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in owned for p in params.values()):
        raise ValueError(
            f"the {type(optimizer).__name__} optimizer owns none of the model's trainable parameters, so the "
            "model would never change: build it from this model's parameters, "
            "e.g. torch.optim.SGD(model.parameters(), lr=...)"
        )
