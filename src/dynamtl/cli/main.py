"""The ``dynamtl`` command: train, compare, resume, plot, list (documented in ``docs/cli.md``).

Every run setting is a flag named after its :class:`~dynamtl.train.config.RunConfig` field
(``batch_size`` -> ``--batch-size``); ``--config FILE`` reads the same keys from a TOML or
JSON file, and flags given on the command line override it.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import signal
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

try:
    import click
except ModuleNotFoundError as missing:  # pragma: no cover - depends on the installed extras
    raise ModuleNotFoundError("the dynamtl command needs click: pip install 'dynamtl[cli]'") from missing

import dynamtl
from dynamtl.cli.gather import Gathering, gathering
from dynamtl.registry import (
    AGGREGATIONS,
    BENCHMARKS,
    PUBLISHED_COMPOSITIONS,
    WEIGHTINGS,
    Method,
    RegistryError,
    benchmark,
)
from dynamtl.report.plots import plot_run
from dynamtl.train.checkpoint import CheckpointError
from dynamtl.train.compare import RunsFailed, draw_comparison_plots, plan_comparison
from dynamtl.train.compare import compare as run_comparison
from dynamtl.train.config import ConfigError, RunConfig, plan, read_config_file
from dynamtl.train.folder import FolderWriteError, RunFolder, RunFolderError
from dynamtl.train.grid import Engine, LocalEngine, SubmititEngine
from dynamtl.train.interrupts import interruptible
from dynamtl.train.processes import launched_as_main
from dynamtl.train.runs import resume as resume_run
from dynamtl.train.runs import train as train_run
from dynamtl.train.session import DataError, RunStopped, TrainingStopped
from dynamtl.train.threads import choose_threads

USER_ERRORS = (ConfigError, RegistryError, RunFolderError, CheckpointError, TrainingStopped, DataError)
COMPARE_KEYS = ("methods", "seeds", "variants", "controls")
MAIN_JOB = Path(__file__).with_name("main_job.toml")
TABLES = {"options": "--option", "benchmark_options": "--benchmark-option"}
"""Config fields that are tables, and the repeatable NAME=VALUE flag of each."""

HELP: dict[str, str] = {
    "benchmark": "benchmark name (see `dynamtl list`)",
    "method": "WEIGHTING[+AGGREGATION], e.g. auto-lambda+cagrad, or stl (single-task baselines)",
    "tasks": "comma-separated tasks of the benchmark to train (default: all)",
    "mode": "multi-task: every task counts; auxiliary: only --primary counts, the others help",
    "primary": "comma-separated primary tasks of auxiliary mode (default: the benchmark's)",
    "noise_task": "add an auxiliary task of pure noise (its weight should fall)",
    "epochs": "epochs (default: the benchmark's)",
    "batch_size": "batch size (default: the benchmark's)",
    "optimizer": "the model's optimizer (default: the benchmark's)",
    "lr": "learning rate (default: the benchmark's)",
    "momentum": "SGD momentum (default: the benchmark's)",
    "weight_decay": "weight decay (default: the benchmark's)",
    "schedule": "learning-rate schedule, stepped every epoch (default: the benchmark's)",
    "step_epochs": "with --schedule step: decay every this many epochs (default: a third of the epochs)",
    "step_gamma": "with --schedule step: the decay factor",
    "meta_source": "meta batches from the validation split (held out) or a reshuffled training split",
    "shuffle": "shuffle the training data every epoch (default: the benchmark's)",
    "seed": "seed of the initialisation, the data order and random methods",
    "limit": "use at most this many training samples",
    "root": "data folder (default: $DYNAMTL_DATA or ~/.cache/dynamtl)",
    "device": "cpu, cuda, cuda:N",
    "threads": "torch threads per run (default: chosen from the usable CPUs, the runs at once and the load)",
    "checkpoint_every": "also checkpoint every N steps (0: at every epoch's end only)",
    "on_nonfinite": "on a NaN/inf loss: stop (keeping the last checkpoint) or skip the batch",
    "precision": "32 (float32), bf16 (bfloat16 autocast) or fp16 (float16 autocast with loss scaling)",
}


class _Cli(click.Group):
    """Commands that report every problem of their command line at once (exit status 2,
    :mod:`dynamtl.cli.gather`); the errors a user can fix that appear while a command runs
    become one-line messages (exit status 1)."""

    command_class = Gathering

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with interruptible():  # Ctrl-C works even where SIGINT was inherited ignored (`cmd &` in a script)
                return super().invoke(ctx)
        except FolderWriteError as error:  # (a run's own says its next step: its remedy is "")
            raise click.ClickException(f"{error}; {error.remedy}, then run the same command again"
                                       if error.remedy else str(error)) from error
        except USER_ERRORS as error:
            raise click.ClickException(str(error)) from error
        except RunStopped as stop:
            if str(stop):  # (said by rank 0 only under torchrun)
                click.echo(str(stop), err=True)
            ctx.exit(128 + stop.signal)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(dynamtl.__version__, prog_name="dynamtl", message="%(prog)s %(version)s")
def main() -> None:
    """Dynamic task weighting for multi-task and auxiliary learning."""


def _run_flags(exclude: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Click options for every field of RunConfig but ``options`` and ``exclude``, typed
    from the field's type hint, all defaulting to ``None`` (= not given)."""
    hints = typing.get_type_hints(RunConfig)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed([n for n in HELP if n not in exclude]):
            flag = "--" + name.replace("_", "-")
            kind = _click_type(hints[name])
            if kind is bool:
                command = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=HELP[name])(command)
            else:
                command = click.option(flag, name, type=kind, default=None, help=HELP[name])(command)
        command = click.option(
            "--option", "options", multiple=True, metavar="NAME=VALUE",
            help="a method option, e.g. lr=3e-4 or cagrad.c=0.2 (repeatable)",
        )(command)
        command = click.option(
            "--benchmark-option", "benchmark_options", multiple=True, metavar="NAME=VALUE",
            help="an option of the benchmark's constructor, e.g. cycles=2 (repeatable)",
        )(command)
        return click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                            help="TOML or JSON file of the same settings; flags override it")(command)

    return decorate


def _click_type(hint: Any) -> Any:
    arguments = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is not Literal and arguments:
        hint = arguments[0]  # X | None -> X
    if typing.get_origin(hint) is Literal:
        return click.Choice(typing.get_args(hint))
    if hint in (bool, int, float):
        return hint
    return str  # names, comma-separated lists: parsed by RunConfig.from_mapping


def _settings(config_file: Path | None, flags: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """The config file's settings, overridden by the flags given; the ``NAME=VALUE``
    flags of a table (``--option``) are merged into the file's table. What cannot be read
    is appended to ``problems`` and left out."""
    values: dict[str, Any] = {}
    if config_file:
        try:
            values = read_config_file(config_file)
        except ConfigError as error:
            problems.append(str(error))
    for table, flag in TABLES.items():
        from_file = values.pop(table, {})
        if not isinstance(from_file, Mapping):
            problems.append(f"{table!r} in {config_file} must be a table of NAME = VALUE")
            from_file = {}
        values[table] = {**from_file, **_parse_pairs(flags.pop(table), flag, problems)}
    values.update({key: value for key, value in flags.items() if value is not None})
    return values


def _parse_pairs(pairs: tuple[str, ...], flag: str, problems: list[str]) -> dict[str, str]:
    parsed = {}
    for item in pairs:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            problems.append(f"{flag} takes NAME=VALUE (e.g. {flag} lr=3e-4), got {item!r}")
        else:
            parsed[key.strip()] = value.strip()
    return parsed


@main.command()
@_run_flags()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="the run folder (default: runs/BENCHMARK/METHOD/seedSEED)")
@click.option("--quiet", is_flag=True, help="no progress bar and no epoch lines")
def train(config_file: Path | None, out: Path | None, quiet: bool, **flags: Any) -> None:
    """Train one run and write its folder."""
    with gathering() as problems:
        config, found = RunConfig.parsed(_settings(config_file, flags, problems), _source(config_file))
        problems += found
        plan(config)
    out = out or Path("runs") / config.benchmark / config.method / f"seed{config.seed}"
    if config.threads is None:
        choice = choose_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        config = config.replace(threads=choice.threads)
        _tell(f"torch threads: {choice.threads} ({choice.reason}; --threads N to change)")
    else:
        _tell(f"torch threads: {config.threads} (--threads)")
    results = train_run(config, out, progress=not quiet)
    _report(results, out)


@main.command()
@_run_flags(exclude=("method", "seed"))
@click.option("--methods", help="comma-separated method specs to compare (stl is always added)")
@click.option("--seeds", help="comma-separated seeds (default: 0)")
@click.option("--controls/--no-controls", default=None,
              help="add the matched controls of runs whose weights do not average 1 (default: on)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="the comparison folder (default: comparisons/BENCHMARK)")
@click.option("--quiet", is_flag=True, help="no progress bars and no epoch lines")
@click.option("--jobs", type=click.IntRange(min=1),
              help="runs trained at once (default: one per usable CPU; with --engine submitit, every run)")
@click.option("--engine", type=click.Choice(["local", "submitit"]), default="local", show_default=True,
              help="local: worker processes on this machine; submitit: one SLURM job per run")
@click.option("--engine-option", "engine_options", multiple=True, metavar="NAME=VALUE",
              help="a submitit executor parameter, e.g. slurm_partition=dev or timeout_min=120 (repeatable)")
def compare(config_file: Path | None, methods: str | None, seeds: str | None, controls: bool | None,
            out: Path | None, quiet: bool, jobs: int | None, engine: str, engine_options: tuple[str, ...],
            **flags: Any) -> None:
    """Train several methods over several seeds, with single-task baselines, and tabulate
    the test metrics and Δ_MTL (mean ± std, best in bold). Without --config and
    --benchmark it runs the main job (the embedded main_job.toml). The runs train in
    --jobs worker processes, each with --threads torch threads; the table does not depend
    on --jobs."""
    try:  # Ctrl-C while the comparison is planned (its data read, its runs looked up) too
        main_job = config_file is None and flags.get("benchmark") is None
        config_file = MAIN_JOB if main_job else config_file
        with gathering() as problems:
            values = _settings(config_file, flags, problems)
            listed = {key: values.pop(key, None) for key in COMPARE_KEYS}
            method_list = _listed(methods if methods is not None else listed["methods"], "methods", str, problems)
            seed_list = _listed(seeds if seeds is not None else listed["seeds"], "seeds", int, problems) or [0]
            base, found = RunConfig.parsed(values, _source(config_file))
            problems += found
            variants = listed["variants"] or {}
            if not isinstance(variants, Mapping) or not all(isinstance(v, Mapping) for v in variants.values()):
                problems.append("variants must be a table of tables: [variants.NAME] method = \"SPEC\", OPTION = VALUE")
                variants = {}
            if methods is not None:  # --methods replaces the file's list: its variants are there to be chosen from
                variants = {name: variant for name, variant in variants.items() if name in method_list}
            runner = _engine(engine, jobs, _parse_pairs(engine_options, "--engine-option", problems), problems)
            plan_comparison(base, method_list, seed_list, variants)
        if main_job:
            click.echo(f"no --benchmark given: running the main job ({MAIN_JOB})")
        out = out or Path("comparisons") / base.benchmark
        with_controls = controls if controls is not None else listed["controls"] is not False
        comparison = run_comparison(base, method_list, seed_list, out, progress=not quiet, variants=variants,
                                    controls=with_controls, engine=runner, say=click.echo)
    except RunsFailed as failed:
        _show(failed.comparison)
        raise click.ClickException(str(failed)) from failed
    except (KeyboardInterrupt, RunStopped) as stop:
        click.echo("interrupted: run the same command again to go on (finished runs are reused, unfinished "
                   "ones continue from their last checkpoint)", err=True)
        click.get_current_context().exit(128 + getattr(stop, "signal", signal.SIGINT))
    _show(comparison)


def _engine(name: str | None, jobs: int | None, options: dict[str, str], problems: list[str]) -> Engine:
    """The engine of ``--engine NAME`` (local when the name was refused); submitit's
    parameters are parsed as numbers where they are numbers. Problems go to ``problems``."""
    if name == "submitit":
        try:
            return SubmititEngine(jobs, {key: _number_or_text(value) for key, value in options.items()})
        except ConfigError as error:
            problems.append(str(error))
    elif options:
        problems.append("--engine-option is for --engine submitit")
    return LocalEngine(jobs)


def _number_or_text(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def _show(comparison: Any) -> None:
    if comparison.markdown:
        click.echo(comparison.markdown)
    if comparison.files:
        click.echo("\nwritten: " + ", ".join(str(f) for f in comparison.files))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--checkpoint", "which", type=click.Choice(["last", "previous"]), default="last", show_default=True,
              help="the checkpoint to continue from")
@click.option("--allow-changes", is_flag=True,
              help="resume although the config or environment (versions, threads) differs from the checkpoint's")
@click.option("--trust-checkpoint", "trust", is_flag=True,
              help="resume from a checkpoint that cannot be verified (its checksum record is missing or damaged, "
                   "or it was changed on purpose): it is still read as weights only, and its checksum recorded anew")
@click.option("--quiet", is_flag=True, help="no progress bar and no epoch lines")
def resume(run_dir: Path, which: str, allow_changes: bool, trust: bool, quiet: bool) -> None:
    """Continue an interrupted run from its checkpoint (a finished run: report its results)."""
    with gathering() as problems:
        if run_dir is not None and not run_dir.is_dir():
            problems.append(f"no folder {run_dir}: give the folder of a run (the --out of `dynamtl train`, e.g. "
                            "runs/drift/equal/seed0)")
    try:
        recorded = RunFolder(run_dir).read_json(RunFolder(run_dir).config).get("threads")
    except RunFolderError:
        recorded = None  # resume says what is wrong, or repairs it
    if recorded is not None:
        _tell(f"torch threads: {recorded} (the run's, from its config.json)")
    results = resume_run(run_dir, which=which, progress=not quiet, allow_changes=allow_changes, trust=trust)
    _report(results, run_dir)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def plot(run_dir: Path) -> None:
    """Draw the plots of a run folder, or of every run below a folder; a comparison's
    folder also gets its comparison figures redrawn."""
    with gathering() as problems:
        runs = _run_folders(run_dir) if run_dir is not None else []
        if run_dir is not None and not runs:
            problems.append(f"no run folder (with the config.json and logs that `dynamtl train` writes) in {run_dir}: "
                            "give a run folder, a comparison's folder or any folder above runs")
    drawn: list[Path] = []
    failed: list[str] = []
    for draw in [*(functools.partial(plot_run, run) for run in runs),
                 *([functools.partial(draw_comparison_plots, run_dir)] if (run_dir / "comparison.json").is_file()
                   else [])]:
        try:
            drawn += draw()
        except ModuleNotFoundError as error:
            raise click.ClickException(str(error)) from error
        except (FileNotFoundError, ValueError) as error:  # this run's; the others are drawn
            failed.append(str(error))
    for path in drawn:
        click.echo(str(path))
    if failed:
        raise click.ClickException("\n".join(failed))


LOGS = ("steps.jsonl", "epochs.jsonl", "events.jsonl", "results.json")


def _run_folders(folder: Path) -> list[Path]:
    """The run folders at or below ``folder``: those with a ``config.json`` and any of its
    logs or ``results.json``, or with a ``steps.jsonl`` (whose ``config.json`` may be lost),
    except the top folder of a single-task baseline (its per-task runs are run folders)."""
    found = {path.parent for path in folder.rglob("config.json") if any((path.parent / log).is_file() for log in LOGS)}
    found |= {path.parent for path in folder.rglob("steps.jsonl")}
    return sorted(run for run in found if not ((run / "tasks").is_dir() and not (run / "steps.jsonl").is_file()))


@main.command(name="list")
def list_() -> None:
    """The benchmarks and methods, with what each method costs per step."""
    with gathering():
        pass  # `list` takes no arguments: report any
    click.echo("Benchmarks:")
    for name in BENCHMARKS:
        bench = benchmark(name)
        click.echo(f"  {name:<12} {bench.description}")
        click.echo(f"  {'':<12} tasks: {', '.join(bench.specs)}; primary: {', '.join(bench.primary)}")
    for title, table in (("Weightings", WEIGHTINGS), ("Aggregations", AGGREGATIONS)):
        click.echo(f"\n{title} (extra passes per step: forward / backward, T tasks):")
        for method in table.values():
            click.echo(_method_line(method))
    click.echo("\nPublished compositions:")
    for name, paper in PUBLISHED_COMPOSITIONS.items():
        click.echo(f"  {name:<12} {paper}")
    click.echo("\nCompose as WEIGHTING+AGGREGATION (e.g. auto-lambda+cagrad); set options with --option NAME=VALUE.")


def _method_line(method: Method) -> str:
    defaults = method.option_defaults()
    options = ", ".join(
        f"{n}={'(required)' if d is inspect.Parameter.empty else d}" for n, d in defaults.items()
    ) or "none"
    notes = " [auxiliary mode]" if method.auxiliary_only else ""
    facts = getattr(method.factory, "facts", None)
    if facts is not None and facts.batches_per_step > 1:
        notes += f" [{facts.batches_per_step} training batches per step]"
    return (f"  {method.name:<12} {method.family}{notes}; extra {method.extra_forward} / {method.extra_backward}\n"
            f"  {'':<12} {method.paper}\n  {'':<12} options: {options}")


def _listed(value: Any, what: str, kind: type, problems: list[str]) -> list[Any]:
    """The comma-separated list ``value`` (or a file's list) of ``kind``; a bad item goes to
    ``problems`` (the list is then empty)."""
    if value is None:
        return []
    items = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else list(value)
    try:
        return [kind(item) for item in items]
    except ValueError:
        problems.append(f"--{what} takes a comma-separated list of {kind.__name__}s (e.g. --{what} "
                        f"{'0,1,2' if kind is int else 'equal,auto-lambda'}), got {value!r}")
        return []


def _source(config_file: Path | None) -> str:
    return f"{config_file} and the flags" if config_file else "the flags"


def _tell(line: str) -> None:
    """A line told once (by rank 0 under torchrun)."""
    if launched_as_main():
        click.echo(line)


def _report(results: Mapping[str, Any], out: Path) -> None:
    """The results, told once (by rank 0 under torchrun)."""
    if not launched_as_main():
        return
    click.echo(f"test metrics: {json.dumps(results['test'])}")
    click.echo(f"run folder: {out}")
