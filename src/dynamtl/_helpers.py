"""Small helpers shared across layers (weightings, aggregations, benchmarks, data loaders).

Kept apart so that no layer imports another only for a helper: aggregations check their
choices without importing the weighting layer, data loaders draw their splits without
importing the benchmark layer.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import torch
from torch import Tensor


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def seeded_permutation(n: int, seed: int) -> Tensor:
    """A permutation of ``range(n)`` fixed by ``seed`` (for reproducible splits)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))



_SCALARS: dict[str, tuple[str, Any]] = {
    # annotation -> (what the message calls it, test of a value)
    "float": ("a number", lambda v: _is_real(v)),
    "int": ("an integer", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    "bool": ("True or False", lambda v: isinstance(v, bool)),
}


def _is_real(value: object) -> bool:
    """A real number (a one-element tensor included), not a bool or a string."""
    if isinstance(value, Tensor):
        return value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_scalar_arguments(cls: type, arguments: dict[str, Any], annotations: dict[str, Any]) -> None:
    """``TypeError`` naming the class, the option and the fix when an option declared ``float``,
    ``int`` or ``bool`` (optionally ``| None``) gets a value of another kind, e.g. the string
    ``"0.4"`` read from a config file, or ``"False"``, which Python would take as true.
    """
    for name, value in arguments.items():
        annotation = annotations.get(name, inspect.Parameter.empty)
        if annotation is inspect.Parameter.empty:
            continue
        if not isinstance(annotation, str):  # a module without postponed annotations
            annotation = inspect.formatannotation(annotation)
        parts = {part.strip() for part in annotation.split("|")}
        optional = "None" in parts
        parts.discard("None")
        if len(parts) != 1 or (kind := parts.pop()) not in _SCALARS or (optional and value is None):
            continue
        what, test = _SCALARS[kind]
        if not test(value):
            raise TypeError(
                f"{cls.__name__}'s option {name} must be {what}{' or None' if optional else ''}, "
                f"got {value!r} ({type(value).__name__}){_fix(cls, name, kind, value)}"
            )


def _fix(cls: type, name: str, kind: str, value: Any) -> str:
    """The corrected call where one can be guessed: quotes dropped, an integral float made an int."""
    if isinstance(value, str):
        return f": write {cls.__name__}({name}={value.strip()}) without quotes"
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return f": write {cls.__name__}({name}={int(value)})"
    return ""


class ArgumentsRepr:
    """Mixin for modules whose ``repr`` is the call that built them: ``CAGrad(c=0.4,
    rescale=True)``. The constructor's arguments, defaults filled in, are recorded when the
    object is created (in ``__new__``, so no subclass has to remember) and shown by
    :meth:`extra_repr` (tensors as lists; arguments kept as child modules are shown as such).
    Options declared ``float``, ``int`` or ``bool`` are checked there too
    (:func:`check_scalar_arguments`), so every method refuses ``c="0.4"`` with the same message.
    """

    _arguments: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(obj, *args, **kwargs)
        except TypeError:  # the constructor will raise its own, clearer error
            arguments: dict[str, Any] = {}
        else:
            bound.apply_defaults()
            arguments = {}
            parameters = list(bound.signature.parameters.values())[1:]
            for (name, value), parameter in zip(list(bound.arguments.items())[1:], parameters):
                if parameter.kind is parameter.VAR_KEYWORD:
                    arguments.update(value)
                elif parameter.kind is parameter.VAR_POSITIONAL:
                    if value:
                        arguments[name] = list(value)
                else:
                    arguments[name] = value
            annotations = {p.name: p.annotation for p in parameters}
            check_scalar_arguments(cls, arguments, annotations)
        object.__setattr__(obj, "_arguments", arguments)
        return obj

    def extra_repr(self) -> str:
        shown = []
        children = getattr(self, "_modules", {})
        for name, value in getattr(self, "_arguments", {}).items():
            if name in children:  # shown below as a child module, by nn.Module's repr
                continue
            shown.append(f"{name}={value.tolist() if isinstance(value, Tensor) else value!r}")
        return ", ".join(shown)
