"""Small helpers shared across layers (weightings, aggregations, benchmarks, data loaders).

Kept apart so that no layer imports another only for a helper: aggregations check their
choices without importing the weighting layer, data loaders draw their splits without
importing the benchmark layer.
"""

from __future__ import annotations

import inspect
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



class ArgumentsRepr:
    """Mixin for modules whose ``repr`` is the call that built them: ``CAGrad(c=0.4,
    rescale=True)``. The constructor's arguments, defaults filled in, are recorded when the
    object is created (in ``__new__``, so no subclass has to remember) and shown by
    :meth:`extra_repr` (tensors as lists; arguments kept as child modules are shown as such).
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
