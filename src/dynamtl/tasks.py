"""What a task is: a name and a loss; the ordered set of tasks of a model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


class Tasks:
    """The ordered tasks of a multi-task model, each a name and a loss ``loss(prediction, target)``.

    The order of ``losses`` fixes the order of every per-task vector in dynamtl (losses,
    weights, gradients).

    Args:
        losses: task name -> loss function returning a scalar tensor.
        multi_input: ``False`` (default): one input batch feeds every task, a batch is
            ``(inputs, {task: target})`` and the model is called ``model(inputs)`` and returns
            ``{task: prediction}``. ``True``: every task has its own inputs (multi-domain
            learning), a batch is ``{task: (inputs, target)}`` and the model is called
            ``model(inputs, task)`` and returns that task's prediction.

    >>> import torch.nn.functional as F
    >>> tasks = Tasks({"digit": F.cross_entropy, "parity": F.cross_entropy})
    >>> tasks.names, tasks.indices(["parity"])
    (('digit', 'parity'), (1,))
    """

    def __init__(self, losses: Mapping[str, LossFn], *, multi_input: bool = False) -> None:
        expect_mapping(losses, "Tasks", "task name -> loss function", "Tasks({'seg': F.cross_entropy, ...})")
        if not losses:
            raise ValueError("Tasks needs at least one task: Tasks({'name': loss_fn, ...})")
        for name, fn in losses.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"task names must be non-empty strings, got {name!r}")
            if isinstance(fn, type):
                raise TypeError(
                    f"the loss of task {name!r} is the class {fn.__name__}, not a loss: give an instance, "
                    f"{fn.__name__}(), or a function"
                )
            if not callable(fn):
                raise TypeError(f"the loss of task {name!r} is not callable: {fn!r}")
        if not isinstance(multi_input, bool):
            raise TypeError(f"Tasks' multi_input is True or False, got {multi_input!r}")
        self.losses: dict[str, LossFn] = dict(losses)
        self.multi_input = multi_input

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.losses)

    def __len__(self) -> int:
        return len(self.losses)

    def __repr__(self) -> str:
        return f"Tasks({list(self.names)}, multi_input={self.multi_input})"

    def indices(self, names: Iterable[str] | str, role: str = "") -> tuple[int, ...]:
        """Positions of ``names`` in the task order; a clear error for unknown or no names."""
        return task_indices(self.names, names, role)


def expect_mapping(value: object, owner: str, what: str, example: str) -> None:
    """``TypeError`` unless ``value`` is a mapping (a list or a string given for one, most often)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{owner} takes a mapping {what}, e.g. {example}; got {type(value).__name__} {value!r}")


def name_list(names: Iterable[str] | str, role: str) -> list[str]:
    """``names`` (one task name or several) as a list; ``TypeError`` for anything else (a
    number, a mapping, a list holding something other than strings). ``role`` (e.g.
    ``"primary"``) qualifies the tasks in the message."""
    if isinstance(names, str):
        return [names]
    if isinstance(names, Iterable) and not isinstance(names, Mapping):
        listed = list(names)
        if all(isinstance(n, str) for n in listed):
            return listed
    raise TypeError(f"the {role} tasks are given by name: a task name or a list of names, got {names!r}")


def task_indices(all_names: Sequence[str], names: Iterable[str] | str, role: str = "") -> tuple[int, ...]:
    """Positions of ``names`` (a name, names, or a mapping's keys) in ``all_names``;
    ``ValueError`` naming unknown, repeated or no names, ``TypeError`` for something that is
    not a name or names. ``role`` (e.g.
    ``"primary"``) qualifies the tasks in the messages."""
    names = list(names) if isinstance(names, Mapping) else name_list(names, role or "named")
    role = f"{role} " if role else ""
    if not names:
        raise ValueError(f"the set of {role}tasks is empty: name at least one of {list(all_names)}")
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise ValueError(f"unknown {role}task(s) {unknown}: they are not among the tasks {list(all_names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{role}tasks are named twice: {names}")
    return tuple(list(all_names).index(n) for n in names)
