"""The configuration of one training run: its fields, its files, and its validation.

A :class:`RunConfig` is what a user gives (flags, a TOML file, Python); ``None`` fields
take the benchmark's defaults. :func:`plan` checks *everything* that can be checked
without training (names of the benchmark, method, options and tasks, value ranges, the
device, that the method can be built for those tasks) and reports every problem at once,
then returns a :class:`RunPlan` whose config has every default filled in: that resolved
config is what a run folder's ``config.json`` holds.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

import dynamtl
from dynamtl._helpers import check_model_arguments, task_argument_errors
from dynamtl.benchmarks.base import Benchmark, default_root
from dynamtl.benchmarks.noise import NOISE, WithNoiseTask
from dynamtl.registry import (
    Method,
    MethodContext,
    MethodSpec,
    OptionValue,
    RegistryError,
    benchmark,
    benchmark_options,
    benchmark_parameters,
    parse_method,
    parse_value,
    parse_what_parses,
)
from dynamtl.tasks import task_indices

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Mode = Literal["multi-task", "auxiliary"]
Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["none", "cosine", "step"]
MetaSource = Literal["val", "train"]
OnNonFinite = Literal["stop", "skip"]
Precision = Literal["32", "bf16", "fp16"]


ENVIRONMENT = "environment"
"""The key of ``config.json`` that records :func:`environment` beside the settings."""


class ConfigError(ValueError):
    """A run configuration that cannot be trained; the message lists every problem.

    ``problems`` holds them one by one (a single message is its own list), so that a
    caller can merge them with problems found elsewhere (the command line's own, in
    :mod:`dynamtl.cli.gather`)."""

    def __init__(self, *problems: str, heading: str = "invalid run configuration") -> None:
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(problems[0] if len(problems) == 1 else f"{heading}:\n{listed}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run. ``None`` = the benchmark's default.

    Attributes:
        benchmark: the benchmark's name (``dynamtl list``).
        benchmark_options: keyword arguments of the benchmark's constructor
            (``{"cycles": 2}`` for ``drift``).
        method: a method spec, ``WEIGHTING[+AGGREGATION]`` (``"auto-lambda+cagrad"``), or
            ``"stl"`` for single-task baselines.
        options: the method's options, ``name -> value`` (``{"lr": 3e-4}``).
        tasks: the benchmark's tasks to train (default: all).
        mode: ``"multi-task"`` (every task counts) or ``"auxiliary"`` (only ``primary``
            counts, the other tasks help).
        primary: the primary tasks in auxiliary mode (default: the benchmark's).
        noise_task: add the auxiliary task ``"noise"`` of pure-noise labels
            (:class:`~dynamtl.benchmarks.noise.WithNoiseTask`, labels fixed by ``seed``): a
            sanity check of a weighting, whose weight for it should fall. It is never
            primary and never counts in Δ_MTL.
        epochs, batch_size, optimizer, lr, momentum, weight_decay: training
            hyper-parameters; ``momentum`` is SGD's only.
        schedule: the learning-rate schedule, stepped once per epoch: ``"none"``,
            ``"cosine"`` (to 0 over the epochs) or ``"step"`` (×``step_gamma`` every
            ``step_epochs`` epochs, default a third of the epochs). Default: ``"cosine"``
            for benchmarks whose defaults say ``extra["cosine_schedule"] = 1`` (the dense
            and CIFAR-100 setups of Auto-Lambda), else ``"none"``.
        meta_source: where meta batches (Auto-Lambda's, HydaLearn's with
            ``gain_batch=meta``) come from: ``"val"``, the validation split (a held-out
            signal, as in Auto-Lambda's auxiliary experiments; the same split also selects
            the model, so the selection is optimistic), or ``"train"``, a second,
            independently shuffled pass over the training split (the paper's multi-task
            setup: no data is held out, but λ may fit the training noise).
        shuffle: shuffle the training split every epoch (default: the benchmark's;
            ``drift`` replays its stream in order).
        seed: seeds the model's initialisation, the data order and every random method.
        limit: at most this many training samples (quick runs, tests).
        root: the data folder (default ``$DYNAMTL_DATA`` or ``~/.cache/dynamtl``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
        threads: torch's intra-op threads for the run (``torch.set_num_threads``; the
            last digits of the results depend on it). ``None``: the count this process
            has when the run is planned. The CLI chooses it
            (:func:`~dynamtl.train.threads.choose_threads`).
        checkpoint_every: also checkpoint every this many steps (0: at the end of every
            epoch only).
        on_nonfinite: on a NaN/inf loss, ``"stop"`` the run (the last checkpoint is kept)
            or ``"skip"`` the batch (skips are counted in the logs).
        precision: ``"32"`` (float32), ``"bf16"`` (steps under bfloat16 autocast) or
            ``"fp16"`` (float16 autocast with a ``torch.amp.GradScaler``, whose state is
            checkpointed; steps whose scaled gradients overflow are skipped and logged
            with ``"skipped": true``). Parameters stay float32 (see
            :mod:`dynamtl.precision`).
    """

    benchmark: str
    benchmark_options: Mapping[str, OptionValue] = field(default_factory=dict)
    method: str = "equal"
    options: Mapping[str, OptionValue] = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None
    mode: Mode = "multi-task"
    primary: tuple[str, ...] | None = None
    noise_task: bool = False
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: Optimizer | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: Schedule | None = None
    step_epochs: int | None = None
    step_gamma: float = 0.1
    meta_source: MetaSource = "val"
    shuffle: bool | None = None
    seed: int = 0
    limit: int | None = None
    root: str | None = None
    device: str = "cpu"
    threads: int | None = None
    checkpoint_every: int = 0
    on_nonfinite: OnNonFinite = "stop"
    precision: Precision = "32"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "the configuration") -> RunConfig:
        """A config from ``key -> value`` (strings from flags, or typed values from a
        file, or a run's ``config.json``, whose ``environment`` is left out), each parsed by
        its field's type; ``ConfigError`` naming unknown keys and values of the wrong type."""
        parsed, problems = _parsed_fields(values, source)
        if "benchmark" not in values:
            problems.append(f"{source} names no benchmark: give --benchmark NAME (see `dynamtl list`)")
        if problems:
            raise ConfigError(*problems)
        return cls(**parsed)

    @classmethod
    def parsed(cls, values: Mapping[str, Any], source: str = "the configuration") -> tuple[RunConfig, list[str]]:
        """Like :meth:`from_mapping`, but never raising: the config of the values that
        parse (``benchmark`` ``""`` when none is given, which :func:`plan` reports) and
        the problems of the others, which keep their defaults, so that :func:`plan` still
        checks the rest (a command line's every problem at once)."""
        parsed, problems = _parsed_fields(values, source)
        return cls(**{"benchmark": "", **parsed}), problems

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON values, exactly as ``config.json`` reads back (tuples as
        lists)."""
        out = dataclasses.asdict(self)
        out["options"], out["benchmark_options"] = dict(self.options), dict(self.benchmark_options)
        result: dict[str, Any] = json.loads(json.dumps(out))
        return result

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def _parsed_fields(values: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """The fields of ``values`` parsed by their types, and the problems of the others
    (unknown keys, values of the wrong type), which are left out."""
    hints = typing.get_type_hints(RunConfig)
    values = {k: v for k, v in values.items() if k != ENVIRONMENT}  # recorded beside a run's settings
    unknown = [k for k in values if k not in hints]
    problems = [f"unknown key(s) {unknown} in {source}; valid keys: {', '.join(hints)}"] if unknown else []
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            continue
        try:
            if key in ("options", "benchmark_options") and isinstance(value, Mapping):
                # a run's config.json records the options' None defaults as null
                # each value is parsed later by the type its method or benchmark declares;
                # a bad one is kept too, so that it is not also reported as missing
                parsed[key] = {str(name): v for name, v in value.items()}
                _check_option_values(value, key)
            else:
                parsed[key] = parse_value(value, hints[key], f"{key}")
        except RegistryError as error:
            problems.append(f"{error} (in {source})")
    for key in ("tasks", "primary"):
        if parsed.get(key) is not None:
            parsed[key] = tuple(parsed[key])
    return parsed, problems


def _check_option_values(values: Mapping[str, Any], key: str) -> None:
    """``RegistryError`` unless each of ``values`` (a config's ``options`` or
    ``benchmark_options`` table) is a value an option may take: a string, number or boolean,
    a list of them, or a table of them (``pref = [1.0, 2.0]``, ``[options.weights]``); ``None``
    (a run's ``config.json`` records unset defaults as ``null``) is taken. Which of these an
    option accepts is checked against its declared type when the method is parsed."""
    problems = [f"{key} {name!r} must be a string, number, true/false, a list or a table, got {value!r}"
                for name, value in values.items() if value is not None and not _is_option_value(value)]
    if problems:
        raise RegistryError("; ".join(problems))


def _is_option_value(value: Any, depth: int = 0) -> bool:
    if isinstance(value, (str, int, float, bool)):
        return True
    if depth == 0 and isinstance(value, (list, tuple)):
        return all(_is_option_value(v, 1) for v in value)
    if depth == 0 and isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_option_value(v, 1) for k, v in value.items())
    return False


def read_config_file(path: Path) -> dict[str, Any]:
    """The ``key -> value`` table of a TOML (``.toml``) or JSON (``.json``) config file;
    ``ConfigError`` for a missing or unreadable file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the config file {path}: {error.strerror}") from error
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ConfigError(f"{path} is not valid {kind}: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table of settings, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class RunPlan:
    """A checked run: the resolved config (every default filled in), the benchmark (with
    the noise task when asked), the parsed method and the context its weighting is built
    from (``context.tasks`` includes the noise task, ``config.tasks`` and
    ``context.primary`` never do)."""

    config: RunConfig
    benchmark: Benchmark
    method: MethodSpec
    context: MethodContext


def plan(config: RunConfig) -> RunPlan:
    """Check ``config`` and fill in its defaults, including every option of the method's
    weighting and aggregation (a default that changes in a later dynamtl version then shows
    as a difference, instead of silently changing a resumed run); ``ConfigError`` listing
    every problem: a wrong benchmark name does not hide a wrong method or value. An empty
    ``benchmark`` is reported as missing (see :meth:`RunConfig.parsed`)."""
    problems: list[str] = []
    bench: Benchmark | None = None
    if not config.benchmark:
        problems.append("no benchmark given: give --benchmark NAME (see `dynamtl list`)")
    else:
        try:
            bench = _benchmark(config)
        except RegistryError as error:
            problems.append(str(error))
    if bench is not None:
        config = _resolve_defaults(config, bench)
    problems += _check_ranges(config)
    tasks, primary = _check_tasks(config, bench, problems) if bench is not None else ((), ())
    try:  # the options that parse are built below even when others do not: every problem at once
        method, found = parse_what_parses(config.method, _with_benchmark_options(config, bench))
    except RegistryError as error:
        method, found = None, str(error).splitlines()
    problems += found
    named = method or _method_named(config.method)
    if named is not None and named.single_task and config.noise_task:
        problems.append("stl trains each primary task alone: --noise-task does not apply to it")
    wrong_mode = named is not None and named.auxiliary_only and config.mode != "auxiliary"
    if wrong_mode:
        assert named is not None
        problems.append(f"{named.name!r} weighs auxiliary tasks against primary ones: run it with "
                        "--mode auxiliary (and --primary TASK, or the benchmark's default primary task)")
    trained = (*tasks, NOISE) if config.noise_task else tasks
    context = MethodContext(trained, primary, config.mode == "auxiliary", config.seed)
    if method is not None and bench is not None and tasks and primary and not wrong_mode:
        weighting, aggregation, found = method.build_halves(context)
        halves = ((weighting, method.weighting, method.weighting_options),
                  (aggregation, method.aggregation, method.aggregation_options))
        for built, half, options in halves:  # the per-task options, also of a half that could not be built
            try:
                if built is not None:
                    built.bind(trained)
            except ValueError as error:
                found += str(error).splitlines()
            if built is None:
                found += [str(error) for error in task_argument_errors(half.factory, options, trained)]
        try:
            _check_model_options([half for half in (weighting, aggregation) if half is not None], bench, trained)
        except ValueError as error:
            found += str(error).splitlines()
        problems += found
        if aggregation is not None and aggregation.needs_representation and bench.representation is None:
            problems.append(f"{method.name} needs a shared representation that every head reads, and the model "
                            f"of {bench.name!r} has none: drop upper_bound, or use a network with one "
                            f"(network=split on NYUv2 and CityScapes)")
    if problems:
        raise ConfigError(*problems)
    assert method is not None and bench is not None
    resolved = config.replace(
        method=method.name, tasks=tasks, primary=primary if config.mode == "auxiliary" else None,
        options=_every_option(method),
        benchmark_options=benchmark_options(config.benchmark, config.benchmark_options),
    )
    return RunPlan(resolved, bench, method, context)


def _check_model_options(methods: Sequence[Any], bench: Benchmark, tasks: Sequence[str]) -> None:
    """Check the options that name parameters of the model (GradNorm's ``layer``) against the
    benchmark's model for ``tasks``, built only when such an option is set."""
    if not any(getattr(m, "_arguments", {}).get(o) is not None for m in methods for o in m.parameter_options):
        return
    model = bench.model({task: bench.specs[task].out_features for task in tasks})
    trainable = tuple(name for name, p in model.named_parameters() if p.requires_grad)
    # a benchmark keeps each task's own modules in modules keyed by the task's name (heads.main)
    per_task = tuple(name for name in trainable if set(name.split(".")) & set(tasks))
    for method in methods:
        check_model_arguments(method, trainable, per_task)


def _method_named(spec: str) -> MethodSpec | None:
    """The method ``spec`` names without its options (``None`` when the name is wrong),
    to check what does not depend on them."""
    try:
        return parse_method(spec)
    except RegistryError:
        return None


def _every_option(method: MethodSpec) -> dict[str, Any]:
    """The method's options with their values: those given, and the defaults of all others."""
    def filled(half: Method, given: Mapping[str, Any]) -> dict[str, Any]:
        defaults = {k: v for k, v in half.option_defaults().items() if v is not inspect.Parameter.empty}
        return {**defaults, **given}

    return dataclasses.replace(
        method, weighting_options=filled(method.weighting, method.weighting_options),
        aggregation_options=filled(method.aggregation, method.aggregation_options),
    ).options


def resolved_record(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded config (``config.json``'s or a checkpoint's; its ``environment`` left
    out) as this dynamtl resolves it today: every setting the record lacks (written before
    the setting existed) takes its current default. ``{}`` when the record no longer plans
    (then no setting counts as defaulted)."""
    try:
        return plan(RunConfig.from_mapping({k: v for k, v in recorded.items() if k != ENVIRONMENT})).config.to_dict()
    except ConfigError:
        return {}


def environment() -> dict[str, Any]:
    """What besides the config can change a run's numbers: the versions of dynamtl and
    torch and torch's thread count (recorded in ``config.json`` and every checkpoint)."""
    return {"dynamtl": dynamtl.__version__, "torch": str(torch.__version__), "threads": torch.get_num_threads()}


def _benchmark(config: RunConfig) -> Benchmark:
    """The benchmark, with the task ``"noise"`` when ``noise_task``: a benchmark whose
    constructor takes ``noise`` makes its own (the dense ones: a per-pixel noise map), any
    other is wrapped in :class:`~dynamtl.benchmarks.noise.WithNoiseTask`."""
    if NOISE in config.benchmark_options:
        raise RegistryError(f"ask for the noise task with --noise-task, not with the benchmark option {NOISE!r}")
    if not config.noise_task:
        return benchmark(config.benchmark, config.benchmark_options)
    if NOISE in benchmark_parameters(config.benchmark):
        return benchmark(config.benchmark, {**config.benchmark_options, NOISE: True})
    try:
        return WithNoiseTask(benchmark(config.benchmark, config.benchmark_options), seed=config.seed)
    except ValueError as error:
        raise RegistryError(str(error)) from error


def _with_benchmark_options(config: RunConfig, bench: Benchmark | None) -> dict[str, OptionValue]:
    """The run's method options over the benchmark's ``defaults.method_options`` for the
    parts of its method (qualified ``part.name``, so a combination routes them right)."""
    try:
        spec = parse_method(config.method)
    except RegistryError:
        return dict(config.options)  # parsed again with the options, which reports it
    if bench is None:
        return dict(config.options)
    parts = (spec.weighting.name, spec.aggregation.name)
    defaults = {f"{part}.{name}": value for part in parts
                for name, value in bench.defaults.method_options.get(part, {}).items()}
    return {**defaults, **config.options}


def _resolve_defaults(config: RunConfig, bench: Benchmark) -> RunConfig:
    d = bench.defaults
    epochs = config.epochs if config.epochs is not None else d.epochs
    optimizer = config.optimizer or d.optimizer
    return config.replace(
        epochs=epochs,
        batch_size=config.batch_size if config.batch_size is not None else d.batch_size,
        optimizer=optimizer,
        lr=config.lr if config.lr is not None else d.lr,
        momentum=config.momentum if config.momentum is not None else (d.momentum if optimizer == "sgd" else 0.0),
        weight_decay=config.weight_decay if config.weight_decay is not None else d.weight_decay,
        step_epochs=config.step_epochs if config.step_epochs is not None else max(1, epochs // 3),
        shuffle=config.shuffle if config.shuffle is not None else bool(d.extra.get("shuffle", 1.0)),
        schedule=config.schedule or ("cosine" if d.extra.get("cosine_schedule") else "none"),
        root=str(config.root if config.root is not None else default_root()),
        threads=config.threads if config.threads is not None else torch.get_num_threads(),
    )


def _check_ranges(c: RunConfig) -> list[str]:
    """The out-of-range values of ``c`` (fields still ``None``, left unresolved when the
    benchmark is unknown, are not checked)."""
    checks = [
        (c.epochs is None or c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}"),
        (c.batch_size is None or c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}"),
        (c.lr is None or c.lr > 0, f"lr must be > 0, got {c.lr}"),
        (c.momentum is None or 0 <= c.momentum < 1, f"momentum must lie in [0, 1), got {c.momentum}"),
        (not c.momentum or c.optimizer == "sgd", f"momentum is SGD's; {c.optimizer} has none: drop --momentum"),
        (c.weight_decay is None or c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}"),
        (c.step_epochs is None or c.step_epochs >= 1, f"step_epochs must be >= 1, got {c.step_epochs}"),
        (0 < c.step_gamma <= 1, f"step_gamma must lie in (0, 1], got {c.step_gamma}"),
        (0 <= c.seed < 2**63, f"seed must be >= 0 and below 2**63 (a 64-bit integer), got {c.seed}"),
        (c.limit is None or c.limit >= 1, f"limit must be >= 1 (or absent), got {c.limit}"),
        (c.threads is None or c.threads >= 1, f"threads must be >= 1, got {c.threads}"),
        (c.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0: every epoch only), got {c.checkpoint_every}"),
    ]
    problems = [message for ok, message in checks if not ok]
    try:
        device = torch.device(c.device)
    except RuntimeError:
        problems.append(f"device {c.device!r} is not a torch device: use cpu, cuda or cuda:N")
    else:
        if device.type == "cuda" and not torch.cuda.is_available():
            problems.append(f"device {c.device!r} asked for, but CUDA is not available here: use --device cpu")
    return problems


def _check_tasks(config: RunConfig, bench: Benchmark, problems: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the run's tasks, the primary tasks), appending what is wrong to ``problems``."""
    names = tuple(task for task in bench.specs if task != NOISE)
    tasks = config.tasks if config.tasks is not None else names
    try:
        task_indices(names, tasks, role="selected")
    except ValueError as error:
        problems.append(f"{error} of benchmark {bench.name!r}")
        return (), ()
    if config.mode == "multi-task":
        if config.primary is not None:
            problems.append("primary tasks are for --mode auxiliary; in multi-task mode every task counts")
        return tasks, tasks
    primary = config.primary if config.primary is not None else bench.primary
    try:
        task_indices(tasks, primary, role="primary")
    except ValueError as error:
        default = "" if config.primary is not None else f" (the benchmark's default primary {list(primary)})"
        problems.append(f"{error}{default}: give --primary among --tasks")
        return tasks, ()
    if len(primary) == len(tasks) and not config.noise_task:
        problems.append(
            f"auxiliary mode needs a task besides the primary {list(primary)}: add one to --tasks, or --noise-task"
        )
    return tasks, tuple(primary)
