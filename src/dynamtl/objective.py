"""Every task's loss of a model on a batch, at the model's parameters or at any others.

Methods such as Auto-Lambda and HydaLearn evaluate the losses at parameters the model
does not hold (a look-ahead θ', perturbed θ ± εu). :class:`Objective` does that with
:func:`torch.func.functional_call`, without copying the model, and such extra evaluations
run on *copies* of the buffers, so BatchNorm running statistics only ever see the real
forward pass. Random layers (dropout) can replay the random state of an earlier forward
pass so that all evaluations of one step see the same dropout masks.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from dynamtl.distributed import Replicas, compiled, unwrap
from dynamtl.nonfinite import check_losses
from dynamtl.precision import Precision, float32_loss
from dynamtl.tasks import Tasks

RngState = tuple[Tensor, list[Tensor]]


def capture_rng(device: torch.device) -> RngState:
    """The CPU random state and, on CUDA, the device's, to replay a forward pass exactly."""
    cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def replayed_rng(state: RngState | None, device: torch.device) -> Iterator[None]:
    """Run the block with the random state ``state``, restoring the current one afterwards."""
    if state is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if devices:
            torch.cuda.set_rng_state(state[1][0], device)
        yield


class Objective:
    """The per-task losses ``L(θ; batch) = [L_1, …, L_T]`` of ``model`` for ``tasks``.

    Args:
        model: an ``nn.Module``; see :class:`~dynamtl.Tasks` for the call convention.
        tasks: the tasks and their losses.

        representation: optionally the name of the submodule whose output Z every task's
            head reads (e.g. ``"trunk"``); the real forward pass then keeps Z so that
            methods can differentiate the losses down to Z only (the MGDA-UB shortcut).

    Only parameters with ``requires_grad=True`` are "the parameters" θ that methods
    differentiate and move; frozen ones stay as they are.

    Every evaluation is one *pass* with a name (``"training"``, ``"meta"``,
    ``"perturbation +εu"``…). An exception raised inside the model or a task's loss is raised
    again, with its type, naming the pass (and so the batch) and the task; with
    :attr:`check_finite` a NaN or infinite loss raises
    :class:`~dynamtl.NonFiniteLossError` naming the pass and the task(s) (under DDP the
    methods check the values averaged over the processes instead, so that every process
    takes the same decision).

    A :class:`~torch.nn.parallel.DistributedDataParallel` model is called as it is for the
    losses at its own parameters; evaluations at other parameters, parameter and submodule
    names go to the module it wraps, and :attr:`replicas` averages over its processes
    (see :mod:`dynamtl.distributed`).
    """

    def __init__(self, model: nn.Module, tasks: Tasks, representation: str | None = None) -> None:
        self.model = model
        self.module = unwrap(model)
        self.replicas = Replicas.of(model)
        self.tasks = tasks
        self.representation: list[Tensor] = []
        self.representation_name = representation
        self._capturing = False
        if representation is not None:
            _submodule(self.module, representation).register_forward_hook(self._capture)
        self.params: dict[str, nn.Parameter] = {
            name: p for name, p in self.module.named_parameters() if p.requires_grad
        }
        if not self.params:
            raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
        self.device = next(iter(self.params.values())).device
        self.precision = Precision(device_type=self.device.type)  # MultiTask(..., scaler=...) sets its own
        self.check_finite = False
        # whether the model's backward is one compiled node (torch.compile of the whole model),
        # which per-task gradients cannot use; None until the first per-task gradients
        self.whole_compiled_backward: bool | None = None

    def losses(
        self,
        batch: Any,
        params: Mapping[str, Tensor] | None = None,
        rng: RngState | None = None,
        pass_name: str = "training",
        only: Sequence[str] | None = None,
    ) -> Tensor:
        """The vector of task losses ``[L_1, …, L_T]`` in task order; see :meth:`task_losses`."""
        return torch.stack(self.task_losses(batch, params, rng, pass_name, only))

    def task_losses(
        self,
        batch: Any,
        params: Mapping[str, Tensor] | None = None,
        rng: RngState | None = None,
        pass_name: str = "training",
        only: Sequence[str] | None = None,
    ) -> list[Tensor]:
        """Every task's scalar loss, in task order (or those of ``only``, in its order).

        Args:
            batch: ``(inputs, {task: target})``, or ``{task: (inputs, target)}`` for
                multi-input tasks.
            params: parameter name -> value to evaluate at instead of the model's own
                (any subset of the trainable parameters). When given, the model's buffers
                are not modified (the call runs on copies of them).
            rng: a random state from :func:`capture_rng` to replay (same dropout masks).
            pass_name: the name of this evaluation in error messages (it says which batch:
                ``"training"``, ``"meta"``, ``"look-ahead of task 'b' (training batch)"``…).
            only: the names of the tasks whose losses are wanted (default: all); the batch
                needs the targets of these tasks only (a meta batch of primary labels).

        Whether a graph is built follows the autograd mode of the caller. Each loss is a
        separate graph root, so differentiating one task's loss reaches only the parameters
        it depends on (other heads get ``None``, not zeros). A loss that does not depend on
        the parameters (e.g. a masked loss with no labelled sample, returning a constant)
        is moved to the parameters' device and has no gradient: every method treats that
        task as having a zero gradient in this step. Inside a step under autocast the
        model runs under the caller's autocast and the losses are float32 (see
        :mod:`dynamtl.precision`).
        """
        with replayed_rng(rng, self.device), self.precision.forward():
            if params is None:
                self.representation, self._capturing = [], True
                try:
                    losses = self._losses(batch, self.model, pass_name, only)
                finally:
                    self._capturing = False
            else:
                buffers = {name: b.clone() for name, b in self.module.named_buffers()}
                call = _FunctionalModel(self.module, {**params, **buffers})
                losses = self._losses(batch, call, pass_name, only)
        if self.check_finite and not self.replicas.distributed:
            check_losses(losses, self.tasks.names if only is None else only, pass_name)
        return losses

    def no_representation(self, task: str | None = None) -> str:
        """Why no representation was captured in the step's forward pass (or, with ``task``,
        why that task's loss does not depend on the captured one), and the fix."""
        name = self.representation_name
        if name is None:
            return (
                "no shared representation was captured: build MultiTask(..., representation='NAME') "
                "with the name of the submodule whose output the task heads read"
            )
        what = (
            f"the loss of task {task!r} does not depend on the output of {name!r} captured in the forward pass"
            if task is not None
            else f"no shared representation was captured from {name!r}"
        )
        if compiled(self.model):
            return (
                f"{what}: the model is torch.compile'd as a whole, and inside its compiled graph the hook that reads "
                f"{name!r}'s output does not see the tensor the heads use; compile its submodules instead "
                f"(model.{name} = torch.compile(model.{name}), and the heads likewise) and give MultiTask the "
                "uncompiled model"
            )
        if task is not None:
            return f"{what}: name as representation the submodule whose output every task's head reads"
        return f"{what}: the submodule {name!r} was not called in the forward pass; name the one the task heads read"

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        """Forward hook of the representation module: keep Z of the real forward pass."""
        if self._capturing:
            if not isinstance(output, Tensor):
                raise TypeError(f"the representation module must return a tensor, got {type(output).__name__}")
            self.representation.append(output)

    def _losses(self, batch: Any, model: Any, pass_name: str, only: Sequence[str] | None) -> list[Tensor]:
        names = self.tasks.names if only is None else tuple(only)
        if self.tasks.multi_input:
            if not isinstance(batch, Mapping):
                raise TypeError(
                    f"multi-input tasks take a batch {{task: (inputs, target)}}, got {type(batch).__name__} "
                    f"in the {pass_name} pass"
                )
            _check_keys(batch, names, f"the batch of the {pass_name} pass")
            losses = []
            for n in names:
                if not (isinstance(batch[n], (tuple, list)) and len(batch[n]) == 2):
                    raise TypeError(
                        f"the batch of task {n!r} in the {pass_name} pass must be a pair (inputs, target), "
                        f"got {type(batch[n]).__name__}"
                    )
                with _naming(f"the model called on the inputs of task {n!r}", pass_name):
                    prediction = model(batch[n][0], n)
                losses.append(self._loss(n, prediction, batch[n][1], pass_name))
        else:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Mapping)):
                raise TypeError(
                    "a batch is a pair (inputs, {task: target}); for one input batch per task build "
                    f"Tasks(..., multi_input=True) (got {type(batch).__name__} in the {pass_name} pass)"
                )
            inputs, targets = batch
            _check_keys(targets, names, f"the {pass_name} batch's targets")
            with _naming("the model", pass_name):
                outputs = model(inputs)
            if not isinstance(outputs, Mapping):
                raise TypeError(
                    f"the model must return a mapping task -> prediction, got {type(outputs).__name__}"
                )
            _check_keys(outputs, names, "the model's outputs")
            losses = [self._loss(n, outputs[n], targets[n], pass_name) for n in names]
        return losses

    def _loss(self, name: str, prediction: Tensor, target: Tensor, pass_name: str) -> Tensor:
        with warnings.catch_warnings():
            # torch's element-wise losses only warn when they broadcast a prediction of shape
            # [N] against a target [N, 1] (an [N, N] loss, silently wrong): refuse it
            warnings.filterwarnings("error", message="Using a target size", category=UserWarning)
            try:
                with _naming(f"the loss of task {name!r}", pass_name):
                    loss = self.tasks.losses[name](prediction, target)
            except UserWarning:
                raise ValueError(
                    f"the loss of task {name!r} would broadcast its prediction of shape {_shape(prediction)} "
                    f"against its target of shape {_shape(target)} in the {pass_name} pass: give the "
                    "target the prediction's shape, e.g. target.view_as(prediction), or squeeze the head's output"
                ) from None
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            shape = list(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(
                f"the loss of task {name!r} returned {shape}; a task loss must be a scalar tensor: reduce it "
                f"(e.g. reduction='mean') (in the {pass_name} pass)"
            )
        if loss.device != self.device:
            loss = loss.to(self.device)
        return float32_loss(loss)


def _shape(value: Any) -> Any:
    return list(value.shape) if isinstance(value, Tensor) else type(value).__name__


@contextlib.contextmanager
def _naming(what: str, pass_name: str) -> Iterator[None]:
    """Raise an exception from the user's model or loss again, of the same type, with a
    message that names ``what`` raised it and in which pass (the original is its cause)."""
    try:
        yield
    except Warning:  # a warning made an error by the caller, which names it
        raise
    except Exception as error:
        message = f"{what} raised {type(error).__name__} in the {pass_name} pass: {error}"
        try:
            again = type(error)(message)
        except Exception:  # an exception type with another constructor: keep it, add a note
            if sys.version_info >= (3, 11):  # notes are Python 3.11+; 3.10 re-raises it unchanged
                error.add_note(message)
            raise
        raise again.with_traceback(error.__traceback__) from error


class _FunctionalModel:
    """``model`` called with the tensors ``values`` in place of its own."""

    def __init__(self, model: nn.Module, values: dict[str, Tensor]) -> None:
        self.model, self.values = model, values

    def __call__(self, *args: Any) -> Any:
        return functional_call(self.model, self.values, args)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(
            f"the model has no submodule {name!r} to take the representation from; its submodules: {names}"
        ) from None


def _check_keys(found: Mapping[str, Any], names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if n not in found]
    if missing:
        raise KeyError(f"{what}: missing task(s) {missing}; expected keys {list(names)}, got {list(found)}")
