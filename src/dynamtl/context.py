"""What one training step knows, shared by the weighting and the aggregation of that step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dynamtl.distributed import compiled
from dynamtl.lookahead import LookAhead
from dynamtl.nonfinite import NonFiniteLossError, check_gradients
from dynamtl.objective import Objective, RngState

Gradients = dict[str, Tensor | None]


@dataclass
class StepContext:
    """One step's inputs and the quantities computed once and reused by every method.

    Attributes:
        objective: the model's per-task losses at any parameters.
        batch: the training batch; ``meta_batch``: the meta (validation) batch or ``None``.
        task_losses: ``[L_1, …, L_T]`` on ``batch`` at the current parameters, each a
            scalar with its own graph; ``losses`` is the same stacked into one vector.
            Under DDP, ``task_losses`` are this process's and ``losses`` holds the global
            batch's values (see :attr:`losses`).
        rng: the random state the forward pass of ``losses`` started from (replay it to get
            the same dropout masks at other parameters).
        step: the number of steps taken before this one.
        optimizer: the model's optimizer, or ``None`` when none was given.
        lookahead: the optimizer's step as a function, for weightings that need it.
        representation: the outputs Z of the shared representation module in the forward
            pass of ``losses`` (empty unless ``MultiTask(..., representation=...)``).
        extra_batches: further training mini-batches drawn independently of ``batch``, for
            aggregations that read several per step (SDMGrad, MoDo; see
            :meth:`extra_task_gradients`); empty otherwise.
    """

    objective: Objective
    batch: Any
    meta_batch: Any
    task_losses: list[Tensor]
    rng: RngState
    step: int
    optimizer: torch.optim.Optimizer | None = None
    lookahead: LookAhead | None = None
    representation: list[Tensor] = field(default_factory=list)
    extra_batches: Sequence[Any] = ()
    _task_gradients: list[Gradients] | None = field(default=None, repr=False)
    _extra_gradients: list[list[Gradients]] | None = field(default=None, repr=False)
    _losses: Tensor | None = field(default=None, repr=False)

    @property
    def losses(self) -> Tensor:
        """The task losses as one vector ``[T]``, with a graph.

        Under DDP its values are the global batch's (the mean over the processes) and its
        gradient is this process's, which DDP averages: every method that reads the losses
        sees the same values on every process."""
        if self._losses is None:
            self._losses = self.objective.replicas.mean_value(torch.stack(self.task_losses))
        return self._losses

    @property
    def params(self) -> dict[str, torch.nn.Parameter]:
        return self.objective.params

    def current_params(self) -> dict[str, Tensor]:
        """The current parameter values, detached (for functional evaluations)."""
        return {n: p.detach() for n, p in self.params.items()}

    def task_gradients(self, heads_apart: bool = True) -> list[Gradients]:
        """∇θ L_k for every task k (``None`` where L_k does not depend on a parameter).

        Computed once per step by one backward pass per task through the shared graph
        (measured as fast as ``vmap`` on CPU) and cached for every method that asks. Under
        DDP they are averaged over the processes (one all-reduce): the global batch's.

        A task whose loss has no graph in this step (no labelled sample in the batch, a
        loss that does not depend on the parameters) gets ``None`` for every parameter: a
        zero gradient row, so the step is the step on the other tasks. With the objective's
        ``check_finite``, a NaN or infinite gradient raises
        :class:`~dynamtl.NonFiniteLossError` naming the task. Under loss scaling they are
        the true (unscaled) gradients, and a non-finite one is an overflow of the scale:
        :class:`~dynamtl.precision.GradientOverflow` (checked first).

        ``heads_apart``: the caller tells the shared parameters from a task's own ones by
        which gradients are ``None`` (every gradient aggregation and gradient weighting);
        ``ValueError`` then for a model ``torch.compile``'d as a whole, whose compiled
        backward gives every parameter a gradient. ``False`` for a caller to which a zero
        gradient and none are the same (HydaLearn's gains are inner products).
        """
        if heads_apart:
            self._refuse_a_whole_compiled_backward(self.task_losses, "training")
        if self._task_gradients is None:
            self._task_gradients = self._gradients(self.task_losses, "training")
        return self._task_gradients

    def extra_task_gradients(self) -> list[list[Gradients]]:
        """:meth:`task_gradients` on each of :attr:`extra_batches`, at the current parameters:
        one list (one dict per task) per extra batch, computed once per step.

        Each extra batch costs one forward pass, through the model's parameters but on copies
        of its buffers (BatchNorm normalises with the extra batch's statistics and its running
        statistics are those of ``batch`` alone, as in a one-batch step), and one backward
        pass per task. Dropout draws new masks. Errors name the pass
        (``"extra batch 1"``...); a task with no graph on an extra batch has a zero row there.
        """
        self._refuse_a_whole_compiled_backward(self.task_losses, "training")
        if self._extra_gradients is None:
            params = dict(self.params)  # the parameters themselves: the graph reaches them
            self._extra_gradients = []
            for number, batch in enumerate(self.extra_batches, start=1):
                name = f"extra batch {number}"
                losses = self.objective.task_losses(batch, params, pass_name=name)
                self._extra_gradients.append(self._gradients(losses, name))
        return self._extra_gradients

    def _gradients(self, task_losses: list[Tensor], pass_name: str) -> list[Gradients]:
        params = list(self.params.values())
        names = list(self.params)
        precision = self.objective.precision
        local: list[Tensor | None] = []
        for loss in task_losses:
            if loss.requires_grad:
                local.extend(precision.local_gradients(loss, params, retain_graph=True))
            else:
                local.extend([None] * len(params))
        grads = self.objective.replicas.means(local)
        precision.check(grads)
        out = [dict(zip(names, grads[k : k + len(names)])) for k in range(0, len(grads), len(names))]
        if self.objective.check_finite:
            check_gradients([list(g.values()) for g in out], self.objective.tasks.names, pass_name)
        return out

    def _refuse_a_whole_compiled_backward(self, task_losses: list[Tensor], pass_name: str) -> None:
        """``ValueError`` when the model is ``torch.compile``'d as a whole through AOTAutograd
        (the default backend): its backward is one node, which gives every parameter a
        gradient, zeros for the heads of the other tasks, instead of none, so the per-task
        gradients cannot tell a task's head from the shared parameters and the heads would be
        weighted like them. Checked once per objective (on the first losses with a graph)."""
        objective = self.objective
        if objective.whole_compiled_backward is None:
            if not compiled(objective.model):
                objective.whole_compiled_backward = False
            elif any(loss.requires_grad for loss in task_losses):
                objective.whole_compiled_backward = any(_reaches_compiled_backward(loss) for loss in task_losses)
        if objective.whole_compiled_backward:
            raise ValueError(
                f"{pass_name}: the model is torch.compile'd as a whole, and its compiled backward gives every "
                "parameter a gradient (zeros where a task's loss does not reach it), so the per-task gradients "
                "cannot tell a task's head from the shared parameters; compile its submodules instead "
                "(model.trunk = torch.compile(model.trunk), and each head likewise) and give MultiTask the "
                "uncompiled model, or use a method that needs no per-task gradients (a loss weighting with Sum)"
            )

    def check_combined_gradient(self, grads: Sequence[Tensor | None], pass_name: str) -> None:
        """With the objective's ``check_finite``: if a gradient combined from the task losses
        (``grads``, one per parameter) holds a NaN or an infinity, raise
        :class:`~dynamtl.NonFiniteLossError` naming the task(s) whose own gradient does (from
        :meth:`task_gradients`, computed now if no method asked for them), or else
        ``pass_name``, where the combination itself went wrong. One device synchronisation."""
        present = [g for g in grads if g is not None]
        if not self.objective.check_finite or not present:
            return
        if bool(torch.stack([g.isfinite().all() for g in present]).all()):
            return
        self.task_gradients(heads_apart=False)  # raises, naming the tasks, if one of theirs is not finite
        dtypes = sorted({str(g.dtype).removeprefix("torch.") for g in present})
        error = NonFiniteLossError("combined gradient", pass_name, {})
        error.cause = (
            f"every task's own gradient is finite, so their combination overflowed {'/'.join(dtypes)}: a preference, "
            "task weight or λ too large for the scale of the gradients (lower it, or scale the loss down)"
        )
        raise error

    @property
    def present(self) -> list[bool]:
        """For every task, whether its loss has a graph in this step (it can have a gradient)."""
        return [loss.requires_grad for loss in self.task_losses]

    def representation_gradients(self) -> Tensor:
        """Rows ∇_Z L_k, flattened over every captured representation output: shape [T, D_Z].

        One backward pass per task through the heads only (the MGDA-UB shortcut). Under DDP
        Z holds this process's samples only: the rows are not averaged (their Gram matrix
        can be)."""
        if not self.representation:
            raise ValueError(self.objective.no_representation())
        rows = []
        for task, loss in zip(self.objective.tasks.names, self.task_losses):
            if not loss.requires_grad:  # no graph in this step: a zero row
                rows.append(torch.cat([torch.zeros_like(z).reshape(-1) for z in self.representation]))
                continue
            grads = self.objective.precision.local_gradients(loss, self.representation, retain_graph=True)
            if all(g is None for g in grads):  # a zero row here would silently freeze the shared layers
                raise ValueError(self.objective.no_representation(task))
            flat = [(torch.zeros_like(z) if g is None else g).reshape(-1) for z, g in zip(self.representation, grads)]
            rows.append(torch.cat(flat))
        return torch.stack(rows)

    @property
    def has_task_gradients(self) -> bool:
        return self._task_gradients is not None


def combine_gradients(task_grads: Sequence[Gradients], weights: Sequence[float | Tensor] | Tensor) -> Gradients:
    """Σₖ wₖ gₖ for every parameter (``None`` where no gₖ has that parameter)."""
    out: Gradients = {}
    for name in task_grads[0]:
        parts: list[Tensor] = [w * grad for w, g in zip(weights, task_grads) if (grad := g[name]) is not None]
        out[name] = sum(parts[1:], parts[0]) if parts else None
    return out


def widened(values: Tensor) -> Tensor:
    """``values`` in float32 if they are float16 or bfloat16 (float32 and float64 unchanged):
    the dtype in which methods take products, norms and differences of a half-precision
    model's gradients and losses."""
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


def _reaches_compiled_backward(loss: Tensor) -> bool:
    """Whether the autograd graph of ``loss`` holds a node of AOTAutograd's compiled backward."""
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "CompiledFunction" in type(node).__name__:
            return True
        todo.extend(next_node for next_node, _ in node.next_functions)
    return False
