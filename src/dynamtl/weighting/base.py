"""The two kinds of weighting: any weighting (sees the whole step), and loss-only weightings."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from dynamtl._helpers import ArgumentsRepr, check_choice, check_task_arguments
from dynamtl.context import StepContext, widened
from dynamtl.facts import Facts
from dynamtl.tasks import Tasks, task_indices

MetaOptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
MetaOptimizerName = Literal["adam", "sgd"]
META_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class Weighting(ArgumentsRepr, nn.Module):
    """Decides the task weights λ of a step.

    A weighting is bound to the task names (``bind``, done by :class:`~dynamtl.MultiTask`)
    and returns, at every step, a vector of weights in task order. Subclasses declare what
    they need: ``needs_meta_batch`` and ``needs_optimizer`` are checked when the step is
    built or run, with a message that names the fix; ``needs_lookahead`` asks for the
    optimizer's step as a function (:class:`~dynamtl.lookahead.LookAhead`).

    ``facts``: the method's name, paper, cost and options (:class:`~dynamtl.facts.Facts`),
    read by the registry. The ``repr`` shows the constructor's arguments.
    """

    needs_meta_batch: bool = False
    needs_optimizer: bool = False
    needs_lookahead: bool = False
    facts: ClassVar[Facts | None] = None
    needs_step_per_backward: bool = False  # one optimizer step after every backward (no accumulation)

    def __init__(self) -> None:
        super().__init__()
        self.task_names: tuple[str, ...] | None = None

    @property
    def num_tasks(self) -> int:
        if self.task_names is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to tasks yet: call .bind(task_names)")
        return len(self.task_names)

    def bind(self, tasks: Tasks | Sequence[str]) -> Weighting:
        """Fix the task names (and so the number of weights); returns ``self``."""
        names = tasks.names if isinstance(tasks, Tasks) else tuple(tasks)
        if self.task_names is not None:
            if names != self.task_names:
                raise ValueError(
                    f"{type(self).__name__} is bound to tasks {list(self.task_names)}, "
                    f"not {list(names)}: use one weighting per task set"
                )
            return self
        if not names:
            raise ValueError("a weighting needs at least one task")
        check_task_arguments(self, names)
        self.task_names = names
        self._on_bind()
        return self

    def _on_bind(self) -> None:
        """Create what depends on the tasks (parameters, indices of primary tasks...)."""

    def weights(self, ctx: StepContext) -> Tensor:
        """The weights λ for this step, shape ``[T]``, in task order."""
        raise NotImplementedError

    def after_backward(self, ctx: StepContext) -> None:
        """Called once the step's gradients are in ``.grad`` (before ``optimizer.step()``)."""

    def end_epoch(self) -> None:
        """Called at the end of every epoch (DWA's loss history lives here)."""

    def explain_failure(self) -> str:
        """What of this weighting's state may explain a non-finite loss (a weight that grew
        without bound…), for the error message; ``""`` when nothing does."""
        return ""

    def regularizer(self) -> Tensor | None:
        """A term added to the weighted loss to train the weighting's own parameters."""
        return None

    def model_optimizer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the weighting that the *model's* optimizer must train."""
        return list(self.parameters())

    def forward(self, losses: Mapping[str, Tensor] | Tensor) -> Tensor:
        raise TypeError(
            f"{type(self).__name__} needs more than the losses (the model, an optimizer or a "
            "meta batch): use dynamtl.MultiTask(model, tasks, optimizer, weighting=...).step(...)"
        )


class LossWeighting(Weighting):
    """A weighting that needs nothing but the losses; also usable as ``loss = w(losses)``.

    ``w(losses)`` returns Σᵢ λᵢ Lᵢ (+ the weighting's regularizer), with ``losses`` a mapping
    task -> scalar loss (which binds the task names on the first call) or a vector in task
    order.
    """

    def loss_weights(self, losses: Tensor) -> Tensor:
        """λ from the detached loss vector ``losses`` (shape ``[T]``)."""
        raise NotImplementedError

    def weights(self, ctx: StepContext) -> Tensor:
        return self.loss_weights(widened(ctx.losses.detach()))

    def refuse_bad_losses(
        self, losses: Tensor, present: Tensor | None, uses: str, fix: str, *, positive: bool = False
    ) -> None:
        """``ValueError`` naming every task present in the step (``present``, all by default)
        whose loss is NaN or infinite (with ``positive``, also ≤ 0), before the weighting
        uses the losses or changes its state: ``"{Class} {uses}, which needs every loss
        finite; got {task: value}: {fix}"``. For the weightings whose weights or state a bad
        loss would make NaN (GLS, STCH, FAMO), in a :class:`~dynamtl.MultiTask` step and in a
        plain ``w(losses)`` call alike (a step also stops on it itself, see ``check_finite``)."""
        values = losses.detach().double().cpu()
        here = torch.ones(len(values), dtype=torch.bool) if present is None else present.cpu().bool()
        bad = here & (~torch.isfinite(values) | (~(values > 0) if positive else torch.zeros_like(here)))
        if bool(bad.any()):
            names = self.task_names or ()
            found = {names[i] if i < len(names) else i: float(values[i]) for i in bad.nonzero().squeeze(1).tolist()}
            raise ValueError(
                f"{type(self).__name__} {uses}, which needs every loss {'> 0 and ' if positive else ''}finite; "
                f"got {found}: {fix}"
            )

    def forward(self, losses: Mapping[str, Tensor] | Tensor) -> Tensor:
        if isinstance(losses, Mapping):
            if self.task_names is None:
                self.bind(list(losses))
            elif set(losses) != set(self.task_names):
                raise ValueError(
                    f"{type(self).__name__} is bound to tasks {list(self.task_names)}, got losses for {list(losses)}"
                )
            vector = torch.stack([losses[n] for n in self.task_names or ()])
        else:
            vector = losses
            if vector.dim() != 1 or vector.numel() != self.num_tasks:
                raise ValueError(
                    f"{type(self).__name__} expects {self.num_tasks} losses in task order, "
                    f"got shape {list(vector.shape)}"
                )
        # λ from float32 copies of half-precision losses, as in a MultiTask step (1/L or a
        # softmax of L/μ overflow float16's 65504 long before float32's range)
        total = (self.loss_weights(widened(vector.detach())) * vector).sum()
        reg = self.regularizer()
        return total if reg is None else total + reg


class PresentTasksWeighting(LossWeighting):
    """A loss weighting with a per-task regulariser that leaves out, in a :class:`MultiTask`
    step, the tasks whose loss has no gradient in that step (in ``loss = w(losses)`` calls
    every task counts)."""

    _present: Tensor | None = None  # the tasks with a gradient in the step (MultiTask)

    def weights(self, ctx: StepContext) -> Tensor:
        self._present = torch.tensor(ctx.present)
        return super().weights(ctx)

    def present_sum(self, values: Tensor) -> Tensor:
        """Σ over the tasks present in the step of ``values`` (shape ``[T]``)."""
        if self._present is None:
            return values.sum()
        return (values * self._present.to(values.device)).sum()



class OwnOptimizer:
    """Mixin for a weighting whose parameters are trained by an optimizer of its own (Adam by
    default, or ``factory(params)``, or one named: ``"adam"`` or ``"sgd"``, plain SGD without
    momentum, built with the same keyword arguments), not by the model's: Auto-Lambda's λ,
    GradNorm's w, FAMO's logits. The optimizer's state is part of the weighting's
    ``state_dict``."""

    meta_optimizer: torch.optim.Optimizer | None = None

    def _own_optimizer(
        self, param: nn.Parameter, factory: MetaOptimizerFactory | MetaOptimizerName | None, **options: Any
    ) -> None:
        if factory is None or isinstance(factory, str):
            name = factory or "adam"
            check_choice("meta_optimizer", name, tuple(META_OPTIMIZERS))
            self.meta_optimizer = META_OPTIMIZERS[name]([param], **options)
        else:
            self.meta_optimizer = factory([param])

    def _own_step(self, param: nn.Parameter, grad: Tensor) -> None:
        """One step of the own optimizer on ``param`` with gradient ``grad``."""
        assert self.meta_optimizer is not None, "bind the weighting first"
        self.meta_optimizer.zero_grad(set_to_none=True)
        param.grad = grad.detach().to(param)
        self.meta_optimizer.step()

    def model_optimizer_parameters(self) -> list[nn.Parameter]:
        return []

    def get_extra_state(self) -> dict[str, Any]:
        assert self.meta_optimizer is not None, "bind the weighting first"
        return {"meta_optimizer": self.meta_optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        assert self.meta_optimizer is not None, "bind the weighting first"
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])


def main_and_auxiliary(
    names: Sequence[str], main_names: Sequence[str], who: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Indices of the main tasks and of the others (auxiliary); an error if none is auxiliary."""
    main = task_indices(names, main_names, role="main")
    auxiliary = tuple(i for i in range(len(names)) if i not in main)
    if not auxiliary:
        raise ValueError(
            f"{who} weighs auxiliary tasks, but main={list(main_names)} names every task: "
            "leave the auxiliary tasks out of main"
        )
    return main, auxiliary
