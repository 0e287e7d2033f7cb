"""Names for the command line: benchmarks, weightings and aggregations, and method specs.

A *method spec* names a weighting, an aggregation, or both joined by ``+``
(``"auto-lambda+cagrad"``); the missing half is ``equal`` or ``sum``. Options
(``{"lr": "3e-4"}``, from ``--option lr=3e-4``) go to the half whose class takes them; a
name accepted by both halves is qualified with the half's name (``cagrad.c=0.2``).

Every entry maps a small :class:`MethodContext` (task names, primary tasks, seed) to its
class's own parameters (``AutoLambda(primary=…)``, ``HydaLearn(main=…)``), and its options
to the other keyword arguments, parsed by the type hints of the class's ``__init__``. Code
that trains never looks at a method's name: it asks the entry (:attr:`Method.single_task`,
:attr:`Method.auxiliary_only`) or the built objects.
"""

from __future__ import annotations

import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from torch import nn

from dynamtl import aggregation as _aggregation_package
from dynamtl import weighting as _weighting_package
from dynamtl.aggregation.base import Aggregation
from dynamtl.benchmarks.base import Benchmark
from dynamtl.facts import Facts
from dynamtl.weighting import Equal, Weighting

OptionValue = str | int | float | bool | Sequence[Any] | Mapping[str, Any]
Kind = Literal["weighting", "aggregation"]


class RegistryError(ValueError):
    """An unknown name or option, or a method spec that does not compose."""


@dataclass(frozen=True)
class MethodContext:
    """What a method may be built from.

    Attributes:
        tasks: the run's task names, in task order.
        primary: the tasks whose performance counts: the primary tasks in auxiliary mode,
            every task of the benchmark in multi-task mode (never the noise task).
        auxiliary: the run is in auxiliary mode.
        seed: the run's seed (for methods that draw random numbers).
    """

    tasks: tuple[str, ...]
    primary: tuple[str, ...]
    auxiliary: bool
    seed: int


def _primary(context: MethodContext) -> list[str]:
    return list(context.primary)


def _seed(context: MethodContext) -> int:
    return context.seed


@dataclass(frozen=True)
class Method:
    """One registry entry: a weighting or an aggregation under its command-line name.

    Attributes:
        name: the command-line name.
        kind: ``"weighting"`` or ``"aggregation"``.
        factory: the class built.
        family: what the method looks at (``"losses"``, ``"gradients"``, ``"meta-learning"``,
            ``"look-ahead"``, ``"gradient aggregation"``, ``"single-task"``).
        paper: authors, title, venue.
        extra_forward, extra_backward: forward and backward passes per step beyond those of
            Equal weighting with Sum (1 forward, 1 backward) for T tasks. The T per-task
            backward passes of gradient-based methods are shared between a weighting and
            an aggregation that both need them.
        options: the keyword arguments of ``factory`` that users may set.
        context: keyword arguments of ``factory`` filled from the :class:`MethodContext`.
        auxiliary_only: the method weighs auxiliary tasks: it needs auxiliary mode.
        single_task: the method trains one model per task (the ``stl`` baseline).
        title: the name in tables.

    Entries are made from the classes' :class:`~dynamtl.facts.Facts` (:func:`method_of`).
    """

    name: str
    kind: Kind
    factory: type[nn.Module]
    family: str
    paper: str
    extra_forward: str
    extra_backward: str
    options: tuple[str, ...] = ()
    context: Mapping[str, Callable[[MethodContext], Any]] = field(default_factory=dict)
    auxiliary_only: bool = False
    single_task: bool = False
    title: str = ""

    def option_types(self) -> dict[str, Any]:
        """Option name -> its type hint in ``factory.__init__``."""
        hints = typing.get_type_hints(self.factory.__init__)
        return {name: hints[name] for name in self.options}

    def option_defaults(self) -> dict[str, Any]:
        """Option name -> its default value (``inspect.Parameter.empty`` when required)."""
        parameters = inspect.signature(self.factory.__init__).parameters
        return {name: parameters[name].default for name in self.options}

    def parse_options(self, given: Mapping[str, OptionValue]) -> dict[str, Any]:
        """``given`` parsed by the type hints of the factory; ``RegistryError`` naming every
        unknown option and every value that does not parse."""
        parsed, problems = self.parse_what_parses(given)
        if problems or parsed is None:
            raise RegistryError("\n".join(problems))
        return parsed

    def parse_what_parses(self, given: Mapping[str, OptionValue]) -> tuple[dict[str, Any] | None, list[str]]:
        """``(parsed, problems)``: the options of ``given`` that parse, and a message for each
        that does not (unknown, or a value of the wrong kind); ``parsed`` is ``None`` when an
        option the factory cannot do without is missing (nothing can be built)."""
        types_ = self.option_types()
        parsed, problems = {}, []
        for name, value in given.items():
            if name not in types_:
                accepted = ", ".join(self.options) or "none"
                problems.append(f"method {self.name!r} takes no option {name!r}; it accepts: {accepted}")
                continue
            try:
                parsed[name] = parse_value(value, types_[name], f"option {name!r} of {self.name!r}")
            except RegistryError as error:
                problems.append(str(error))
        missing = [n for n, d in self.option_defaults().items() if d is inspect.Parameter.empty and n not in given]
        if missing:
            problems.append(f"method {self.name!r} needs the option(s) {missing}: give --option {missing[0]}=VALUE")
        return (None if missing else parsed), problems

    def build(self, context: MethodContext, options: Mapping[str, Any]) -> nn.Module:
        """The weighting or aggregation, from the context and already parsed ``options``."""
        if self.auxiliary_only and not context.auxiliary:
            raise RegistryError(
                f"{self.name!r} weighs auxiliary tasks against primary ones: run it with --mode auxiliary "
                "(and --primary TASK, or the benchmark's default primary task)"
            )
        arguments = {name: fill(context) for name, fill in self.context.items()}
        try:
            return self.factory(**arguments, **options)
        except (TypeError, ValueError, OverflowError) as error:  # every wrong option, one line each
            lines = str(error).splitlines() or [type(error).__name__]
            raise RegistryError("\n".join(f"cannot build {self.name!r}: {line}" for line in lines)) from error


_CONTEXT: dict[str, Callable[[MethodContext], Any]] = {"primary": _primary, "seed": _seed}
FAMILIES = ("losses", "gradients", "meta-learning", "look-ahead", "single-task", "gradient aggregation")
"""The order of the families in listings and tables."""


def method_of(factory: type[nn.Module], facts: Facts | None = None, *, single_task: bool = False) -> Method:
    """The registry entry of ``factory`` from its class attribute ``facts`` (or ``facts``)."""
    facts = facts or getattr(factory, "facts", None)
    if facts is None:
        raise TypeError(f"{factory.__name__} declares no facts: give it a class attribute facts = Facts(...)")
    kind: Kind = "aggregation" if issubclass(factory, Aggregation) else "weighting"
    return Method(
        facts.name, kind, factory, facts.family, facts.paper, facts.extra_forward, facts.extra_backward,
        facts.options, {name: _CONTEXT[field] for name, field in facts.context.items()}, facts.auxiliary_only,
        single_task, facts.title,
    )


def _declared(package: types.ModuleType, base: type[nn.Module], default: str) -> list[Method]:
    """Every class exported by ``package`` that declares its own facts: the default first,
    then by family and name."""
    classes = [getattr(package, name) for name in package.__all__]
    declared = [c for c in classes if isinstance(c, type) and issubclass(c, base) and vars(c).get("facts") is not None]
    methods = [method_of(c) for c in declared]
    return sorted(methods, key=lambda m: (m.name != default, FAMILIES.index(m.family), m.name))


STL = Facts("stl", "Single-task models", "single-task", "one model per task: the reference of Δ_MTL")

PUBLISHED_COMPOSITIONS: dict[str, str] = {
    "imtl-l+imtl-g": "IMTL, the hybrid of Liu et al., Towards Impartial Multi-task Learning, ICLR 2021",
}
"""A published method that is a weighting composed with an aggregation -> its paper."""

WEIGHTINGS: dict[str, Method] = {
    m.name: m
    for m in [*_declared(_weighting_package, Weighting, "equal"), method_of(Equal, STL, single_task=True)]
}
"""Command-line name -> entry, for every weighting that ``dynamtl.weighting`` exports with facts."""

AGGREGATIONS: dict[str, Method] = {m.name: m for m in _declared(_aggregation_package, Aggregation, "sum")}
"""Command-line name -> entry, for every aggregation that ``dynamtl.aggregation`` exports with facts."""

BENCHMARKS: dict[str, str] = {
    "census": "dynamtl.benchmarks.census:Census",
    "drift": "dynamtl.benchmarks.drift:RelevanceDrift",
    "fashion-mnist": "dynamtl.benchmarks.fashion_mnist:FashionMNIST",
    "multimnist": "dynamtl.benchmarks.multimnist:MultiMNIST",
    "nyuv2": "dynamtl.benchmarks.nyuv2:NYUv2",
    "cityscapes": "dynamtl.benchmarks.cityscapes:CityScapes",
    "cifar100": "dynamtl.benchmarks.cifar100:CIFAR100MultiDomain",
    "qm9": "dynamtl.benchmarks.qm9:QM9",
}
"""Benchmark name -> ``module:class``, imported only when that benchmark is used."""


def benchmark(name: str, options: Mapping[str, OptionValue] | None = None) -> Benchmark:
    """A fresh instance of the benchmark ``name`` built with ``options`` (see
    :func:`benchmark_options`); ``RegistryError`` listing the valid names."""
    cls = _benchmark_class(name)
    try:
        return cls(**benchmark_options(name, options or {}))
    except (TypeError, ValueError) as error:
        raise RegistryError(f"cannot build benchmark {name!r}: {error}") from error


def benchmark_options(name: str, options: Mapping[str, OptionValue]) -> dict[str, Any]:
    """``options`` parsed by the type hints of the benchmark's constructor;
    ``RegistryError`` listing the accepted ones."""
    hints = typing.get_type_hints(_benchmark_class(name).__init__)
    accepted = benchmark_parameters(name)
    parsed = {}
    for key, value in options.items():
        if key not in accepted:
            listed = ", ".join(accepted) or "none"
            raise RegistryError(f"benchmark {name!r} takes no option {key!r}; it accepts: {listed}")
        parsed[key] = parse_value(value, hints[key], f"option {key!r} of benchmark {name!r}")
    return parsed


def benchmark_parameters(name: str) -> list[str]:
    """The keyword arguments of the constructor of the benchmark ``name``."""
    parameters = inspect.signature(_benchmark_class(name).__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _benchmark_class(name: str) -> type[Benchmark]:
    if name not in BENCHMARKS:
        raise RegistryError(f"unknown benchmark {name!r}; valid benchmarks: {', '.join(BENCHMARKS)}")
    module, cls = BENCHMARKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method spec: a weighting, an aggregation and the options of each."""

    weighting: Method
    aggregation: Method
    weighting_options: Mapping[str, Any]
    aggregation_options: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The canonical spec: the weighting, ``+`` the aggregation unless it is ``sum``."""
        if self.aggregation.name == "sum":
            return self.weighting.name
        if self.weighting.name == "equal":
            return self.aggregation.name
        return f"{self.weighting.name}+{self.aggregation.name}"

    @property
    def options(self) -> dict[str, Any]:
        """The parsed options by name, qualified (``half.name``) where both halves take it."""
        out = {}
        for half, other, values in (
            (self.weighting, self.aggregation, self.weighting_options),
            (self.aggregation, self.weighting, self.aggregation_options),
        ):
            out.update({f"{half.name}.{k}" if k in other.options else k: v for k, v in values.items()})
        return out

    @property
    def single_task(self) -> bool:
        return self.weighting.single_task

    @property
    def auxiliary_only(self) -> bool:
        return self.weighting.auxiliary_only or self.aggregation.auxiliary_only

    def takes(self, option: str) -> bool:
        """Whether ``option`` (``name``, or ``half.name`` qualified) is an option of this method."""
        owner, dot, name = option.rpartition(".")
        halves = (self.weighting, self.aggregation)
        return any((not dot or owner == half.name) and name in half.options for half in halves)

    def build(self, context: MethodContext) -> tuple[Weighting, Aggregation]:
        """The weighting and aggregation objects for one run; ``RegistryError`` listing the
        problems of both halves."""
        weighting, aggregation, problems = self.build_halves(context)
        if problems:
            raise RegistryError("\n".join(problems))
        assert weighting is not None and aggregation is not None
        return weighting, aggregation

    def build_halves(self, context: MethodContext) -> tuple[Weighting | None, Aggregation | None, list[str]]:
        """``(weighting, aggregation, problems)``: each half built, or ``None`` with its
        problems (one line each) when it cannot be, so that both halves are checked."""
        problems: list[str] = []

        def attempt(half: Method, options: Mapping[str, Any]) -> nn.Module | None:
            try:
                return half.build(context, options)
            except RegistryError as error:
                problems.extend(str(error).splitlines())
                return None

        weighting = attempt(self.weighting, self.weighting_options)
        aggregation = attempt(self.aggregation, self.aggregation_options)
        assert weighting is None or isinstance(weighting, Weighting)
        assert aggregation is None or isinstance(aggregation, Aggregation)
        return weighting, aggregation, problems


def parse_method(spec: str, options: Mapping[str, OptionValue] | None = None) -> MethodSpec:
    """Parse ``"weighting"``, ``"aggregation"`` or ``"weighting+aggregation"`` and route
    ``options`` to the half that takes each; ``RegistryError`` listing the valid names or
    options."""
    method, problems = parse_what_parses(spec, options)
    if problems:
        raise RegistryError("\n".join(problems))
    assert method is not None
    return method


def parse_what_parses(
    spec: str, options: Mapping[str, OptionValue] | None = None
) -> tuple[MethodSpec | None, list[str]]:
    """``(method, problems)``: :func:`parse_method` with the options that parse, and a message
    for each problem (an option that goes nowhere or does not parse), so that a caller can
    go on to check the values of the others (:meth:`MethodSpec.build_halves`). ``method`` is
    ``None`` when a required option is missing; a wrong spec (an unknown name) raises
    ``RegistryError``."""
    parts = [p.strip() for p in spec.split("+")]
    if len(parts) > 2 or not all(parts):
        raise RegistryError(
            f"method spec {spec!r} must be WEIGHTING, AGGREGATION or WEIGHTING+AGGREGATION, e.g. 'auto-lambda+cagrad'"
        )
    if len(parts) == 2:
        weighting = _lookup(parts[0], WEIGHTINGS, "weighting")
        aggregation = _lookup(parts[1], AGGREGATIONS, "aggregation")
    elif parts[0] in AGGREGATIONS:
        weighting, aggregation = WEIGHTINGS["equal"], AGGREGATIONS[parts[0]]
    else:
        weighting, aggregation = _lookup(parts[0], WEIGHTINGS, "method"), AGGREGATIONS["sum"]
    if weighting.single_task and aggregation.name != "sum":
        raise RegistryError(f"{weighting.name!r} trains one model per task and takes no aggregation: drop "
                            f"'+{aggregation.name}'")
    routed, problems = _route(options or {}, weighting, aggregation)
    parsed: dict[str, dict[str, Any] | None] = {}
    for half in (weighting, aggregation):
        parsed[half.name], found = half.parse_what_parses(routed[half.name])
        problems += found
    first, second = parsed[weighting.name], parsed[aggregation.name]
    if first is None or second is None:
        return None, problems
    return MethodSpec(weighting, aggregation, first, second), problems


def method_names() -> list[str]:
    """Every name a method spec may use."""
    return [*WEIGHTINGS, *AGGREGATIONS]


def _lookup(name: str, table: Mapping[str, Method], role: str) -> Method:
    if name in table:
        return table[name]
    valid = method_names() if role == "method" else list(table)
    raise RegistryError(f"unknown {role} {name!r}; valid names: {', '.join(valid)}")


def _route(
    options: Mapping[str, OptionValue], weighting: Method, aggregation: Method
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Option name -> value for each half, and the options that go nowhere; ``half.name=value``
    goes to that half, an unqualified name to the one half that accepts it."""
    problems: list[str] = []
    routed: dict[str, dict[str, Any]] = {weighting.name: {}, aggregation.name: {}}
    halves = {weighting.name: weighting, aggregation.name: aggregation}
    for key, value in options.items():
        owner, dot, option = key.rpartition(".")
        if dot:
            if owner not in halves:
                problems.append(f"option {key!r} is qualified with {owner!r}, which is not part of this method; "
                                f"qualify with one of {list(halves)}")
                continue
            routed[owner][option] = value
            continue
        takers = [h.name for h in halves.values() if key in h.options]
        if len(takers) > 1:
            problems.append(f"option {key!r} is accepted by both {takers[0]!r} and {takers[1]!r}: write "
                            f"{takers[0]}.{key}=… or {takers[1]}.{key}=…")
        elif not takers:
            accepted = [f"{h.name}: {', '.join(h.options) or 'none'}" for h in halves.values()]
            problems.append(f"no part of the method takes option {key!r}; accepted options — {'; '.join(accepted)}")
        else:
            routed[takers[0]][key] = value
    return routed, problems


_SEQUENCES = (Sequence, list, tuple)
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def parse_value(value: Any, hint: Any, what: str) -> Any:
    """``value`` (a string from the command line, or a value already typed by a TOML file)
    converted to the type ``hint``: ``bool``, ``int``, ``float``, ``str``, ``Literal[…]``,
    ``X | None`` (``"none"``), ``Sequence[X]`` (``"a,b"``), ``Mapping[str, X]``
    (``"a:1,b:0.5"``) and unions of them (the first that parses)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if type(None) in arguments and (value is None or (isinstance(value, str) and value.lower() == "none")):
            return None
        alternatives = [a for a in arguments if a is not type(None)]
        # a callable is set from Python: the command line's message lists what it can give
        alternatives = [a for a in alternatives if typing.get_origin(a) is not Callable] or alternatives
        if isinstance(value, str) and "," in value:  # a list first: "a,b" is two names, not one
            alternatives.sort(key=lambda a: typing.get_origin(a) not in _SEQUENCES)
        errors = []
        for alternative in alternatives:
            try:
                return parse_value(value, alternative, what)
            except RegistryError as error:
                errors.append(str(error).removeprefix(f"{what} "))
        raise RegistryError(f"{what} {' or '.join(errors)}")
    if origin is Literal:
        if value not in arguments:
            raise RegistryError(f"{what} must be one of {list(arguments)}, got {value!r}")
        return value
    if origin in (Mapping, dict, typing.Mapping):
        items = _split_pairs(value, what) if isinstance(value, str) else value
        if not isinstance(items, Mapping):
            raise RegistryError(f"{what} expects key:value pairs like 'a:1,b:0.5', got {value!r}")
        return {str(k): parse_value(v, arguments[1], what) for k, v in items.items()}
    if origin in _SEQUENCES:
        if isinstance(value, str) and value.strip()[:1] == "[" and value.strip()[-1:] == "]":
            value = value.strip()[1:-1]  # "[1, 2]", as config.json writes a list, is "1,2"
        items = [p.strip() for p in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise RegistryError(f"{what} expects a comma-separated list, got {value!r}")
        return [parse_value(v, arguments[0], what) for v in items]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOLEANS:
            return _BOOLEANS[value.lower()]
        raise RegistryError(f"{what} expects true or false, got {value!r}")
    if hint in (int, float):
        return _number(value, hint, what)
    if hint is str:
        if not isinstance(value, str):
            raise RegistryError(f"{what} expects a string, got {value!r}")
        return value
    raise RegistryError(f"{what} has a type the command line cannot give ({hint}); set it from Python")


def _number(value: Any, kind: type, what: str) -> int | float:
    if isinstance(value, bool):
        raise RegistryError(f"{what} expects {'an integer' if kind is int else 'a number'}, got {value!r}")
    try:
        number = kind(value) if isinstance(value, str) or kind is float else value
    except OverflowError:  # an integer of hundreds of digits from a config file, for a float option
        raise RegistryError(f"{what} expects a finite number, got an integer of {len(str(abs(value)))} digits "
                            "(too large for a float)") from None
    except (TypeError, ValueError):
        number = None
    if not isinstance(number, (int, float)) or (kind is int and not isinstance(number, int)):
        raise RegistryError(f"{what} expects {'an integer' if kind is int else 'a number'}, got {value!r}")
    if isinstance(value, str) and isinstance(number, float) and _beyond_float(value, number):
        raise RegistryError(f"{what} expects a number within a float's range (1e-308 to 1e308 in size, or 0), "
                            f"got {value.strip()!r}, which would read as {number!r}")
    return number


def _beyond_float(text: str, number: float) -> bool:
    """Whether the decimal ``text`` names a non-zero finite number that reads as 0 or ±∞ (1e-400, 1e400)."""
    mantissa = text.strip().lower().lstrip("+-").partition("e")[0]
    if number == 0.0:
        return any(c in "123456789" for c in mantissa)
    return math.isinf(number) and "inf" not in text.lower()


def _split_pairs(text: str, what: str) -> dict[str, str]:
    pairs = {}
    for item in (p.strip() for p in text.split(",") if p.strip()):
        key, colon, value = item.partition(":")
        if not colon or not key.strip():
            raise RegistryError(f"{what} expects key:value pairs like 'a:1,b:0.5', got {text!r}")
        if key.strip() in pairs:
            raise RegistryError(f"{what}: task {key.strip()!r} is given twice in {text!r}; give each task once")
        pairs[key.strip()] = value.strip()
    return pairs
