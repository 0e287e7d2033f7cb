"""Small helpers shared across layers (weightings, aggregations, benchmarks, data loaders).

Kept apart so that no layer imports another only for a helper: aggregations check their
choices without importing the weighting layer, data loaders draw their splits without
importing the benchmark layer.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable as CallableABC
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor


def describe(error: BaseException) -> str:
    """``"Type: message"`` of an exception (its type alone when it has no message), for a
    one-line report."""
    text = " ".join(str(error).split())  # torch's errors span lines
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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
_NUMBER_LISTS = {"Sequence[float]", "list[float]"}
_NAME_LISTS = {"Sequence[str]", "list[str]"}
_NUMBER_MAPS = {"Mapping[str, float]", "dict[str, float]"}
_BOOLEAN_WORDS = {
    "true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False,
}


def _is_real(value: object) -> bool:
    """One real number: a Python or NumPy number, or a 0-d tensor; not a bool, a string, or a
    tensor with a dimension (``torch.tensor([0.5])`` has shape ``[1]``: it is a list)."""
    if isinstance(value, Tensor):
        return value.dim() == 0 and not value.dtype.is_complex and value.dtype != torch.bool
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_scalar(value: object) -> bool:
    """One real number: a Python or NumPy number, or a 0-d tensor (not a list or a 1-D tensor)."""
    return _is_real(value)


def _finite(cls: type, name: str, value: Any, number: Any) -> float:
    """``float(number)`` for an element of option ``name``'s ``value``; ``ValueError`` naming
    the class and the option for NaN, ±∞ or an integer too large for a float (never a bare
    ``OverflowError``)."""
    try:
        result = float(number)
    except OverflowError:
        raise ValueError(f"{cls.__name__}'s option {name} must hold finite numbers, got "
                         f"{_short(number)} (an integer too large for a float)") from None
    if not math.isfinite(result):
        raise ValueError(f"{cls.__name__}'s option {name} must hold finite numbers, got {value!r}")
    return result


@dataclass(frozen=True)
class Interval:
    """The values an option accepts, written as in mathematics: ``"(0, inf)"`` (positive and
    finite), ``"[0, 1]"``, ``"[1, inf)"``; an infinite end is admitted only with a closing
    bracket (``"(0, inf]"``: +∞ is meaningful). NaN is never in an interval."""

    text: str

    def __post_init__(self) -> None:
        low, high = (part.strip() for part in self.text[1:-1].split(","))
        if self.text[0] not in "[(" or self.text[-1] not in "])" or not float(low) <= float(high):
            raise ValueError(f"an interval is written like '(0, inf)' or '[0, 1]', got {self.text!r}")

    def __contains__(self, value: float) -> bool:
        low, high = (float(part) for part in self.text[1:-1].split(","))
        above = value >= low if self.text[0] == "[" else value > low
        below = value <= high if self.text[-1] == "]" else value < high
        return above and below

    def words(self, integer: bool = False) -> str:
        """What the message says: ``"> 0 and finite"``, ``">= 1"`` (an integer), ``"in [0, 1]"``,
        ``"a finite number"``."""
        low, high = (part.strip() for part in self.text[1:-1].split(","))
        if high != "inf" or self.text[-1] == "]":
            return f"in {self.text}"
        if low == "-inf":
            return "an integer" if integer else "a finite number"
        return f"{'>=' if self.text[0] == '[' else '>'} {low}{'' if integer else ' and finite'}"


FINITE = Interval("(-inf, inf)")


def check_arguments(cls: type, arguments: dict[str, Any], annotations: dict[str, Any]) -> None:
    """Refuse, naming the class, the option, the value and the fix, a constructor argument of
    the wrong kind or outside its range, by the option's annotation:

    * ``float``, ``int``, ``bool`` (optionally ``| None``): ``TypeError`` for a value of
      another kind (the string ``"0.4"`` read from a config file, ``"False"``, which Python
      would take as true, a float for an integer); ``ValueError`` for a number outside the
      interval the class declares in ``option_ranges`` (:class:`Interval`), and for a float
      option without one, for NaN or ±∞. A number is a Python or NumPy number or a 0-d
      tensor; a tensor of shape ``[1]`` is a list (refused, with the fix).
    * ``Sequence[float]`` (a value per task): a list, tuple or 1-D tensor of finite numbers
      (or one number where ``float`` is an alternative); a string or mapping is refused.
    * ``Sequence[str]``/``list[str]`` (task names): a list or tuple of strings; a single
      string only where ``str`` is an alternative (``IMTLL(tasks="t0")`` is refused, not
      split into characters).
    * ``Mapping[str, float]`` (task name -> number): a mapping of names to finite numbers.

    An integer too large for a float, anywhere, is a ``ValueError`` (never ``OverflowError``).

    The lengths and names, which need the tasks, are checked by :func:`check_task_arguments`.
    """
    errors: list[Exception] = []
    for name, value in arguments.items():
        try:
            _check_argument(cls, name, value, annotations)
        except (TypeError, ValueError) as error:
            errors.append(error)
    raise_all(errors)


class OptionsError(TypeError, ValueError):
    """Several options of one method are wrong: ``problems`` holds one message per option
    (each naming the class, the option, the value and the fix), and the message is those
    lines. A ``TypeError`` and a ``ValueError``, as each of its problems is one or the other."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def raise_all(errors: Sequence[Exception]) -> None:
    """Raise the one error of ``errors`` as it is, several as one :class:`OptionsError`, so
    that every wrong option of a method is reported at once; nothing when there is none."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise OptionsError([line for error in errors for line in str(error).splitlines()])


def _check_argument(cls: type, name: str, value: Any, annotations: dict[str, Any]) -> None:
    """One constructor argument against its annotation and declared range (see :func:`check_arguments`)."""
    ranges: Mapping[str, Interval] = getattr(cls, "option_ranges", {})
    hints = _resolved_hints(cls)
    parts, optional = _annotation_parts(annotations.get(name, inspect.Parameter.empty))
    if value is None and optional:
        return
    if name in hints:
        _check_choice_or_callable(cls, name, value, hints[name])
    if len(parts) == 1 and (kind := next(iter(parts))) in _SCALARS:
        what, test = _SCALARS[kind]
        if not test(value):
            raise TypeError(
                f"{cls.__name__}'s option {name} must be {what}{' or None' if optional else ''}, "
                f"got {value!r} ({type(value).__name__}){_fix(cls, name, kind, value)}"
            )
        if kind != "bool":
            _check_range(cls, name, value, kind, ranges.get(name, FINITE if kind == "float" else None))
    elif parts & _NUMBER_LISTS:
        values = _check_number_list(cls, name, value, scalar="float" in parts)
        _check_values(cls, name, value, values, ranges.get(name))
    elif parts & _NAME_LISTS:
        if not (isinstance(value, str) and "str" in parts) and not (
            isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        ):
            example = f"[{value!r}]" if isinstance(value, str) else "['a', 'b']"
            what = "a task name or a list of task names" if "str" in parts else "a list of task names"
            raise TypeError(f"{cls.__name__}'s option {name} is {what}, got "
                            f"{type(value).__name__} {value!r}: write {cls.__name__}({name}={example})")
    elif parts & _NUMBER_MAPS and not (isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
            and all(_is_real(v) and (isinstance(v, numbers.Integral) or math.isfinite(float(v)))
                    for v in value.values())):
        raise TypeError(
            f"{cls.__name__}'s option {name} maps task names to finite numbers, e.g. "
            f"{cls.__name__}({name}={{'a': 1.0, 'b': 0.5}}) (on the command line {name}=a:1,b:0.5), "
            f"got {type(value).__name__} {value!r}"
        )
    elif parts & _NUMBER_MAPS:
        values = [_finite(cls, name, value, v) for v in value.values()]
        _check_values(cls, name, value, values, ranges.get(name))
    check = getattr(cls, "option_checks", {}).get(name)
    if check is not None:  # what the annotation cannot say (CRMOGM's aggregation by registry name)
        check(value)


def _check_values(cls: type, name: str, value: Any, values: list[float], interval: Interval | None) -> None:
    """The values of a per-task option (a list or a mapping): each in the option's declared
    ``interval``, and, for the task weights a class names in ``weight_options``, not empty,
    not all 0, and (unless only their ratios matter) each 0 or in :data:`WEIGHT_SCALE`."""
    if interval is not None and not all(v in interval for v in values):
        raise ValueError(f"{cls.__name__}'s option {name} must hold numbers {interval.words()}, got {value!r}")
    if name not in getattr(cls, "weight_options", ()):
        return
    relative = name in getattr(cls, "relative_weight_options", ())
    what = ("relative task weights (only their ratios matter)" if relative else
            "task weights that scale each task's share of the update ([2, 2] is twice [1, 1])")
    example = "{'a': 1.0, 'b': 2.0}" if isinstance(value, Mapping) else "[1.0, 2.0]"
    if not sum(values) > 0:
        raise ValueError(f"{cls.__name__}'s option {name} holds {what}: give at least one, not all 0 "
                         f"(e.g. {cls.__name__}({name}={example})), got {value!r}")
    low, high = WEIGHT_SCALE
    if not relative and not all(v == 0 or low <= v <= high for v in values):
        raise ValueError(f"{cls.__name__}'s option {name} holds {what}: each must be 0 or between {low:g} and "
                         f"{high:g} (beyond, the update under- or overflows), got {value!r}")


WEIGHT_SCALE = (1e-30, 1e30)
"""The non-zero values a per-task weight option that scales the update (``weight_options``
not in ``relative_weight_options``) takes: inside float32's normal range with room for the
products the methods form."""


INT64 = 2**63
"""Integer options are 64-bit signed integers (the size torch takes): |value| < 2**63."""


def _check_range(cls: type, name: str, value: Any, kind: str, interval: Interval | None) -> None:
    """``ValueError`` for a number outside ``interval``, an integer option outside the 64-bit
    range, or an integer too large for a float option (no ``OverflowError``)."""
    def refuse(words: str) -> None:
        raise ValueError(f"{cls.__name__}'s option {name} must be {words}, got {_short(value)}")

    if kind == "int":
        number: float = int(value)
        if not -INT64 <= number < INT64:
            refuse(f"{interval.words(True) + ' and ' if interval else ''}below 2**63 (a 64-bit integer)")
    else:
        try:
            number = float(value)
        except OverflowError:
            refuse(f"{interval.words() if interval else 'a finite number'} (an integer too large for a float)")
    if interval is not None and number not in interval:
        refuse(interval.words(kind == "int"))


def _short(value: Any) -> str:
    """``repr(value)``, an integer of more than 30 digits written by its size."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)) >= 10**30:
        return f"an integer of {len(str(abs(int(value))))} digits ({str(int(value))[:8]}…)"
    return repr(value)


@functools.cache
def _resolved_hints(cls: type) -> dict[str, Any]:
    """The constructor's type hints of ``cls``, resolved (``{}`` where they cannot be)."""
    try:
        return typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    except (NameError, TypeError):
        return {}


def _check_choice_or_callable(cls: type, name: str, value: Any, hint: Any) -> None:
    """For an option whose type is made only of ``Literal`` choices and callables (and
    ``None``): ``ValueError``/``TypeError`` naming the class, the option, the choices and
    whether a callable is taken, for any other value (a NumPy array included)."""
    alternatives = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    alternatives = tuple(a for a in alternatives if a is not type(None))
    choices = [c for a in alternatives if typing.get_origin(a) is typing.Literal for c in typing.get_args(a)]
    takes_callable = any(typing.get_origin(a) is CallableABC or a is CallableABC for a in alternatives)
    literal_or_callable = sum(typing.get_origin(a) is typing.Literal for a in alternatives) + takes_callable
    if not alternatives or literal_or_callable != len(alternatives):
        return
    if any(type(value) is type(c) and value == c for c in choices) or (takes_callable and callable(value)):
        return
    listed = f"one of {choices}" if choices else ""
    expected = " or ".join(filter(None, [listed, "a callable" if takes_callable else ""]))
    error = ValueError if isinstance(value, str) else TypeError
    raise error(f"{cls.__name__}'s option {name} must be {expected}, got {_short(value)}")


def _annotation_parts(annotation: Any) -> tuple[set[str], bool]:
    """The alternatives of an annotation (``"float | None"`` -> ``{"float"}``, optional)."""
    if annotation is inspect.Parameter.empty:
        return set(), False
    if not isinstance(annotation, str):  # a module without postponed annotations
        annotation = inspect.formatannotation(annotation)
    depth, parts, start = 0, [], 0
    for i, char in enumerate(annotation):  # split on the | outside brackets
        depth += (char == "[") - (char == "]")
        if char == "|" and depth == 0:
            parts.append(annotation[start:i])
            start = i + 1
    parts.append(annotation[start:])
    kinds = {part.strip().replace("typing.", "").replace("collections.abc.", "") for part in parts}
    optional = "None" in kinds
    kinds.discard("None")
    return kinds, optional


def _check_number_list(cls: type, name: str, value: Any, scalar: bool) -> list[float]:
    """A list, tuple, 1-D tensor or 1-D NumPy array of finite numbers (or, with ``scalar``,
    one number)."""
    if scalar and is_scalar(value):
        values = [value]
    elif isinstance(value, Tensor) and value.dim() == 1 and not value.dtype.is_complex and value.dtype != torch.bool:
        values = value.tolist()
    elif type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 1 and value.dtype.kind in "iuf":
        values = value.tolist()  # a NumPy array of numbers, as a 1-D tensor
    elif isinstance(value, (list, tuple)) and all(_is_real(v) for v in value):
        values = list(value)
    else:
        one = "one number or " if scalar else ""
        raise TypeError(
            f"{cls.__name__}'s option {name} is {one}a list of numbers in task order (a list, tuple or 1-D tensor), "
            f"got {type(value).__name__} {value!r}: write e.g. {cls.__name__}({name}=[1.0, 0.5])"
        )
    return [_finite(cls, name, value, v) for v in values]


def check_task_arguments(module: Any, names: Sequence[str]) -> None:
    """``ValueError`` naming the option, the class, the expected length and the tasks when an
    option with a value per task (``Sequence[float]``) does not have one per task, or an
    option keyed by task name (``Mapping[str, float]``) names a task that is not among
    ``names`` (every such option at once, see :func:`raise_all`). Called when a weighting or
    an aggregation is bound to its tasks."""
    raise_all(task_argument_errors(type(module), getattr(module, "_arguments", {}), names))


def task_argument_errors(cls: type, arguments: Mapping[str, Any], names: Sequence[str]) -> list[ValueError]:
    """The problems :func:`check_task_arguments` raises, for the constructor ``arguments`` of
    ``cls`` (also when ``cls`` cannot be built from them: the command line reports these with
    the others)."""
    annotations = _annotations(cls)
    errors: list[ValueError] = []
    for option, value in arguments.items():
        parts, _ = _annotation_parts(annotations.get(option, inspect.Parameter.empty))
        if value is None:
            continue
        if parts & _NUMBER_LISTS and not is_scalar(value) and hasattr(value, "__len__"):
            if len(value) != len(names):
                errors.append(ValueError(
                    f"{cls.__name__}'s option {option} has {len(value)} value(s) but there are {len(names)} tasks "
                    f"{list(names)}: give {len(names)} values, one per task in this order"
                ))
        elif parts & _NUMBER_MAPS and isinstance(value, Mapping):
            unknown = [k for k in value if k not in names]
            if unknown:
                errors.append(ValueError(f"{cls.__name__}'s option {option} names task(s) {unknown} that are not "
                                         f"among the tasks {list(names)}"))
    return errors


def check_model_arguments(module: Any, parameters: Sequence[str], per_task: Sequence[str] = ()) -> None:
    """``ValueError`` naming the class, the option and the model's trainable parameters when
    an option that names parameters of the model (declared in the class's
    ``parameter_options``, e.g. GradNorm's ``layer``) names one the model lacks (or no
    trainable one), or one of ``per_task``: parameters known to belong to one task (a
    benchmark model's heads, in modules keyed by task name), which no other task's loss
    depends on. Called when a :class:`~dynamtl.MultiTask` or a Lightning module is built
    (``per_task`` empty: which parameters every task's loss depends on is known there only
    at the first step), and by ``dynamtl train``/``compare`` when they plan a run, before any
    training."""
    cls = type(module)
    candidates = [name for name in parameters if name not in set(per_task)]
    listed = f"{candidates[:40]}{' …' if len(candidates) > 40 else ''}"
    among = f"among its {'shared ' if per_task else ''}trainable parameters {listed}"
    for option in getattr(cls, "parameter_options", ()):
        value = getattr(module, "_arguments", {}).get(option)
        if value is None:
            continue
        given = [value] if isinstance(value, str) else list(value)
        unknown = [name for name in given if name not in parameters]
        if unknown:
            raise ValueError(
                f"{cls.__name__}'s option {option} names {unknown}, which the model has no trainable parameter "
                f"called: choose {among}"
            )
        heads = [name for name in given if name in set(per_task)]
        if heads:
            raise ValueError(
                f"{cls.__name__}'s option {option} names {heads}, which belong to one task's head (no other "
                f"task's loss depends on them): choose {among}"
            )


def _annotations(cls: type[Any]) -> dict[str, Any]:
    """Parameter name -> annotation of the constructor of ``cls`` (``self`` left out)."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p.annotation for p in parameters}


def _fix(cls: type[Any], name: str, kind: str, value: Any) -> str:
    """The corrected call where one can be guessed: quotes dropped, an integral float made an
    int, a word for a flag made a bool."""
    if kind == "bool":
        word = value.strip().lower() if isinstance(value, str) else None
        return f": write {cls.__name__}({name}={_BOOLEAN_WORDS.get(word, True)!r})" if word in _BOOLEAN_WORDS else \
            f": write {cls.__name__}({name}=True) or {cls.__name__}({name}=False)"
    if isinstance(value, str):
        try:
            (int if kind == "int" else float)(value.strip())
        except ValueError:  # not a number in quotes: 'MoCo(rho=a)' would be no fix
            parameter = inspect.signature(cls.__init__).parameters.get(name)
            default = None if parameter is None else parameter.default
            example = f" such as {cls.__name__}({name}={default!r})" if _is_real(default) else ""
            return f": give {'an integer' if kind == 'int' else 'a number'}{example}"
        return f": write {cls.__name__}({name}={value.strip()}) without quotes"
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return f": write {cls.__name__}({name}={int(value)})"
    if kind == "int" and isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_floating_point \
            and not value.dtype.is_complex and value.dtype != torch.bool:
        return f": write {cls.__name__}({name}={int(value)}), a Python int (an int option is used as a count or seed)"
    if kind == "float" and isinstance(value, Tensor) and value.numel() == 1 and _is_real(value.reshape(())):
        return (f": a tensor of shape {list(value.shape)} is a list, not a number; write "
                f"{cls.__name__}({name}={value.item()!r}) or a 0-d tensor")
    return ""


class ArgumentsRepr:
    """Mixin for modules whose ``repr`` is the call that built them, on one line:
    ``CAGrad(c=0.4, rescale=True)``, ``CRMOGM(aggregation=UPGrad(pref=None, reg_eps=0.0001,
    max_iters=100), beta=0.9)``. The constructor's arguments, defaults filled in, are
    recorded when the object is created (in ``__new__``, so no subclass has to remember)
    and shown by :meth:`extra_repr` (tensors as lists, composed methods by their own
    ``repr``). They are checked there too (:func:`check_arguments`), so every method
    refuses ``c="0.4"``, ``reg_eps=nan`` or ``tasks="t0"`` with the same kind of message;
    ``option_ranges`` declares, next to each method, the interval of each numeric option;
    ``parameter_options`` the options that name parameters of the model
    (:func:`check_model_arguments`); ``weight_options`` the per-task options that are
    task weights (not empty, not all 0; each 0 or in :data:`WEIGHT_SCALE`, as they scale the
    update), except those also in ``relative_weight_options``, whose scale the method
    removes (only the ratios matter; any positive scale is taken). A declared range applies
    to every value of a per-task list or mapping. ``option_checks`` maps an option to a
    function of its value that raises ``TypeError``/``ValueError`` (naming the class, the
    option and the fix) for what its annotation cannot say, such as a registry name that
    must be of some kind; it runs with the other checks, so every wrong option is reported
    at once.
    """

    option_ranges: ClassVar[Mapping[str, Interval]] = {}
    parameter_options: ClassVar[tuple[str, ...]] = ()
    weight_options: ClassVar[tuple[str, ...]] = ()
    relative_weight_options: ClassVar[tuple[str, ...]] = ()
    option_checks: ClassVar[Mapping[str, CallableABC[[Any], None]]] = {}
    _arguments: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__new__(cls)
        signature = inspect.signature(cls.__init__)
        try:
            bound = signature.bind(obj, *args, **kwargs)
        except TypeError as error:  # named by the class the user called, not the base that defines __init__
            if not args and not kwargs:
                # copy.deepcopy and pickle make the object bare (``cls.__new__(cls)``) and then
                # put its state, ``_arguments`` included, back; a call without a required
                # option fails in ``__init__``, which names the class
                return obj
            options = [name for name in list(signature.parameters)[1:]
                       if signature.parameters[name].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                   inspect.Parameter.VAR_KEYWORD)]
            fix = (f"its options are {options} (give them by name: {cls.__name__}({options[0]}=...))" if options
                   else f"it takes no options: {cls.__name__}()")
            raise TypeError(f"{cls.__name__}: {error}; {fix}") from None
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
            check_arguments(cls, arguments, _annotations(cls))
        object.__setattr__(obj, "_arguments", arguments)
        return obj

    def extra_repr(self) -> str:
        shown = []
        for name, value in getattr(self, "_arguments", {}).items():
            shown.append(f"{name}={_plain(value)!r}")
        return ", ".join(shown)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def _plain(value: Any) -> Any:
    """``value`` with tensors and NumPy numbers or arrays made Python numbers and lists, at
    every depth of lists, tuples and dicts (so that a ``repr`` is exact and evaluates)."""
    if isinstance(value, Tensor) or (type(value).__module__ == "numpy" and hasattr(value, "tolist")):
        return value.tolist()
    if isinstance(value, numbers.Rational) and not isinstance(value, numbers.Integral):
        return float(value)  # a Fraction: its repr would need an import
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def intervals(**given: str) -> Mapping[str, Interval]:
    """A class's ``option_ranges`` (read-only): ``option_ranges = intervals(beta="[0, 1]", lr="(0, inf)")``."""
    return MappingProxyType({name: Interval(text) for name, text in given.items()})
