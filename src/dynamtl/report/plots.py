"""Plots of run folders: task weights over steps, validation metrics over epochs; of
comparisons: the weights of every method, and which methods down-weighted a noise task.

Needs matplotlib (``pip install 'dynamtl[report]'``). Figures are drawn on
:class:`matplotlib.figure.Figure` objects, never through ``pyplot``: no global state and no
backend is touched, and nothing stays open after a plot is saved.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from dynamtl.command import suggested
from dynamtl.report.records import (
    RESULTS_FIELDS,
    DamagedFile,
    config_problems,
    fields_problems,
    read_records,
    read_table,
    taken_steps,
)
from dynamtl.report.shares import Share

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger("dynamtl")

LOG_SCALE_RATIO = 100.0
"""Weights are drawn on a log scale when all are positive and the largest is at least this
many times the median of the lowest task's line; on a linear scale otherwise."""

DPI = 150


@dataclass(frozen=True)
class _WeightLog:
    """The task weights of a run at every logged step (``steps.jsonl``)."""

    steps: list[int]
    weights: dict[str, list[float]]


def plot_run(run_dir: Path, *, smooth: int = 1) -> list[Path]:
    """Save :func:`weights_figure` as ``run_dir/plots/weights.png`` (for a run of more than
    one task: a single task's weight is 1 throughout), :func:`metrics_figure` as
    ``run_dir/plots/metrics.png`` (once an epoch has been logged) and, when the run's
    aggregation gave the task gradients weights that change, those as
    ``run_dir/plots/aggregation-weights.png``; return the paths. A run whose every step was
    skipped (``--on-nonfinite skip``) has no weights to draw: only its metrics are drawn.

    A figure whose log is missing (``steps.jsonl``, ``epochs.jsonl``) or holds nothing to
    draw is left out, and one warning names the file and what was drawn instead;
    ``FileNotFoundError`` or ``ValueError`` saying why when nothing at all can be drawn, or
    when ``config.json`` (the figures' titles) is missing or damaged."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    _describe(run_dir)  # config.json: refused first, naming the fix
    figures: dict[str, Figure | None] = {}
    lost: list[str] = []
    steps = run_dir / "steps.jsonl"
    every_step_skipped = steps.exists() and all(r.get("skipped") for r in _read_jsonl(steps, required=True))
    if not every_step_skipped:
        try:
            several = len(_read_weights(run_dir).weights) > 1
        except (FileNotFoundError, ValueError) as error:
            lost.append(f"weights.png not drawn: {error}")
        else:
            figures["weights.png"] = weights_figure(run_dir, smooth=smooth) if several else None
    if (run_dir / "epochs.jsonl").exists() or not lost:
        figures["metrics.png"] = metrics_figure(run_dir)
    else:
        lost.append(f"metrics.png not drawn: {run_dir / 'epochs.jsonl'} is missing")
    if _varying_aggregation_weights(run_dir):
        figures["aggregation-weights.png"] = weights_figure(run_dir, smooth=smooth, aggregation=True)
    drawn = [_save(figure, plots / name) for name, figure in figures.items() if figure is not None]
    if lost and not drawn:
        raise FileNotFoundError(f"nothing to draw in {run_dir}: {'; '.join(lost)}")
    if lost:
        logger.warning("%s; drawn: %s", "; ".join(lost), ", ".join(path.name for path in drawn))
    return drawn


def plot_weights_comparison(run_dirs: Mapping[str, Path], out: Path, *, smooth: int = 1) -> Path:
    """Save :func:`weights_comparison_figure` to ``out`` (a ``.png``) and return it."""
    figure = weights_comparison_figure(run_dirs, smooth=smooth)
    return _save(figure, Path(out))


def weights_figure(run_dir: Path, *, smooth: int = 1, aggregation: bool = False) -> Figure:
    """Every task's weight over the logged steps of a run, one line per task: λ of the
    weighting, or with ``aggregation`` the weights αₖ the aggregation gave the weighted task
    gradients (``aggregation_weight/<task>``).

    With ``smooth`` > 1 the lines are trailing moving averages over that many logged steps,
    drawn over the faint raw weights. The y axis is logarithmic when the weights span
    :data:`LOG_SCALE_RATIO` or more (and are all positive), linear otherwise. Weights that
    never change (Equal, Static) are drawn as one line per value, labelled with the tasks
    that have it, instead of lines drawn over each other.
    """
    _check_smooth(smooth)
    run_dir = Path(run_dir)
    log = _read_weights(run_dir, "aggregation_weight/" if aggregation else "weight/")
    colours = _task_colours(list(log.weights))
    figure = _figure(9.0, 4.5)
    axes = figure.add_subplot()
    axes.set_xlabel("step")
    axes.set_ylabel("aggregation weight αₖ" if aggregation else "task weight")
    title = "Aggregation weights of the task gradients" if aggregation else "Task weights"
    if _constant(log):
        groups: dict[float, list[str]] = {}
        for task, values in log.weights.items():
            groups.setdefault(values[0], []).append(task)
        for value, tasks in groups.items():
            axes.plot(log.steps, [value] * len(log.steps), color=colours[tasks[0]], linewidth=1.5,
                      label=f"{', '.join(tasks)}: {value:.3g}")
        axes.grid(alpha=0.3)
        _legend_beside(axes, *axes.get_legend_handles_labels(), title="constant weight")
        figure.suptitle(f"{title} — {_describe(run_dir)} (constant over training)")
        return figure
    _draw_weights(axes, log, colours, smooth)
    figure.suptitle(f"{title} — {_describe(run_dir)}{_smoothing_note(smooth)}")
    _task_legend(axes, colours)
    return figure


def metrics_figure(run_dir: Path) -> Figure | None:
    """One panel per validation metric (``val/<task>/<metric>`` in ``epochs.jsonl``) over
    epochs, the epoch selected for testing (``best_epoch`` of ``results.json``, once the run
    has finished) dotted; ``None`` while no epoch has been logged."""
    run_dir = Path(run_dir)
    series = _validation_series(_read_jsonl(run_dir / "epochs.jsonl", required=False))
    if not series:
        return None
    best_epoch = _best_epoch(run_dir)
    colours = _task_colours(list(dict.fromkeys(key.split("/", 1)[0] for key in series)))
    locator = _matplotlib().ticker.MaxNLocator
    rows, columns = _grid(len(series))
    figure = _figure(3.8 * columns, 2.8 * rows + 0.6)
    for index, (key, (epochs, values)) in enumerate(series.items()):
        task, metric = key.split("/", 1)
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.plot(epochs, values, marker="o", markersize=3, color=colours[task])
        if best_epoch is not None:
            axes.axvline(best_epoch, color="grey", linestyle=":", linewidth=1.2)
        axes.set_title(f"{task} · {metric}")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.xaxis.set_major_locator(locator(integer=True))
        axes.grid(alpha=0.3)
    selected = "" if best_epoch is None else f" (dotted: epoch {best_epoch}, selected for testing)"
    figure.suptitle(f"Validation metrics — {_describe(run_dir)}{selected}")
    return figure


def weights_comparison_figure(run_dirs: Mapping[str, Path], *, smooth: int = 1) -> Figure:
    """The task weights of several runs side by side, one panel per run, titled by its key
    in ``run_dirs`` (the method); the figure's title names the benchmark(s) and seed(s).

    A task has the same colour in every panel; each panel has its own y scale (chosen as in
    :func:`weights_figure`), since methods weight on different scales. ``smooth`` as in
    :func:`weights_figure`. Runs whose weights never change (Equal, and every aggregation
    on equal weights) get no panel but a line under the figure with their values, unless
    every run is such a run.
    """
    if not run_dirs:
        raise ValueError("a comparison of weights needs at least one run folder")
    every, lost = {}, []
    for label, run_dir in run_dirs.items():
        try:
            every[label] = _read_weights(Path(run_dir))
        except (FileNotFoundError, ValueError) as error:
            lost.append(f"{label} ({error})")
    if not every:
        raise ValueError(f"no run has weights to draw: {'; '.join(lost)}")
    if lost:
        logger.warning("the comparison of weights leaves out %s", "; ".join(lost))
    configs = [_config(Path(run_dirs[label])) for label in every]
    benchmarks = ", ".join(dict.fromkeys(str(config["benchmark"]) for config in configs))
    seeds = ", ".join(dict.fromkeys(str(config["seed"]) for config in configs))
    colours = _task_colours(list(dict.fromkeys(task for log in every.values() for task in log.weights)))
    constant = {label: log for label, log in every.items() if _constant(log)}
    logs = {label: log for label, log in every.items() if label not in constant} or every
    rows, columns = _grid(len(logs))
    width = 4.2 * columns + 1.6
    figure = _figure(width, 3.0 * rows + 0.6)
    for index, (label, log) in enumerate(logs.items()):
        axes = figure.add_subplot(rows, columns, index + 1)
        _draw_weights(axes, log, colours, smooth)
        axes.set_title(label)
        if index % columns == 0:
            axes.set_ylabel("task weight")
        if index >= len(logs) - columns:
            axes.set_xlabel("step")
    figure.suptitle(f"Task weights — {benchmarks}, seed {seeds}{_smoothing_note(smooth)}")
    if len(logs) < len(every):
        groups: dict[str, list[str]] = {}
        for label, log in constant.items():
            groups.setdefault(_constant_values(log), []).append(label)
        note = "; ".join(f"{', '.join(labels)}: {values}" for values, labels in groups.items())
        figure.supxlabel(textwrap.fill(f"constant over training, not drawn — {note}", int(11 * width)),
                         fontsize="medium")
    _task_legend(figure, colours)
    return figure


def plot_share_comparison(shares: Mapping[str, Sequence[Share]], task: str, out: Path) -> Path:
    """Save :func:`share_comparison_figure` to ``out`` (a ``.png``) and return it."""
    figure = share_comparison_figure(shares, task)
    return _save(figure, Path(out))


def share_comparison_figure(shares: Mapping[str, Sequence[Share]], task: str) -> Figure:
    """Which methods found a useless helper task: one horizontal bar per method (a key of
    ``shares``, top to bottom in order), the mean over its seeds of ``task``'s share of the
    helper weight (:func:`~dynamtl.report.shares.helper_share`), every seed's share a dot,
    and the even share (every helper weighted alike, as Equal does) a dashed line.

    A bar well short of the line is a method that down-weighted ``task``; one at the line
    did not tell it from the other helpers; one beyond it favoured it. Bars are coloured
    from green (share 0) through yellow (the even share) to red (twice the even share or
    more). ``ValueError`` without shares, for a method without any, or when the methods'
    even shares differ (their runs had different helper tasks).
    """
    if not shares or not all(shares.values()):
        empty = [label for label, values in shares.items() if not values]
        raise ValueError(f"a share comparison needs at least one share per method; none for {empty or 'any method'}")
    evens = {share.even for values in shares.values() for share in values}
    if len(evens) > 1:
        raise ValueError(f"the runs have different numbers of helper tasks (even shares {sorted(evens)}): "
                         "compare runs of the same tasks")
    even = evens.pop()
    labels = list(shares)
    means = [statistics.fmean(share.value for share in shares[label]) for label in labels]
    colours = _matplotlib().colormaps["RdYlGn_r"]
    figure = _figure(7.5, 0.9 + 0.38 * len(labels))
    axes = figure.add_subplot()
    rows = range(len(labels))
    axes.barh(rows, means, color=[colours(min(mean / (2 * even), 1.0)) for mean in means], height=0.65,
              edgecolor="black", linewidth=0.5)
    for row, label in zip(rows, labels):
        values = [share.value for share in shares[label]]
        axes.plot(values, [row] * len(values), "o", color="black", markersize=3, alpha=0.7)
    axes.axvline(even, color="black", linestyle="--", linewidth=1)
    axes.text(even, -0.9, f" even share {even:.2g}", fontsize="small", va="center")
    axes.set_yticks(list(rows), labels)
    axes.set_ylim(len(labels) - 0.5, -1.3)
    axes.set_xlim(0, 1)
    axes.set_xlabel(f"{task} task's share of the helper tasks' weight (bar: mean over seeds; dots: seeds)")
    axes.grid(axis="x", alpha=0.3)
    figure.suptitle(f"Which methods down-weighted the {task} task (short bar: found it)")
    return figure


def _constant(log: _WeightLog) -> bool:
    return all(min(values) == max(values) for values in log.weights.values())


def _constant_values(log: _WeightLog) -> str:
    """``"1 for every task"``, or ``"a 1, b 0.5"`` when the constant weights differ."""
    values = {task: f"{series[0]:.3g}" for task, series in log.weights.items()}
    if len(set(values.values())) == 1:
        return f"{next(iter(values.values()))} for every task"
    return ", ".join(f"{task} {value}" for task, value in values.items())


def _varying_aggregation_weights(run_dir: Path) -> bool:
    """Whether ``run_dir/steps.jsonl`` logs aggregation weights that are not constant."""
    try:
        return not _constant(_read_weights(run_dir, "aggregation_weight/"))
    except (ValueError, FileNotFoundError):
        return False


def _read_weights(run_dir: Path, prefix: str = "weight/") -> _WeightLog:
    """The ``<prefix><task>`` series (``weight/``: λ; ``aggregation_weight/``: the
    aggregation's) of ``run_dir/steps.jsonl`` in logged task order, without the batches
    skipped for a non-finite loss."""
    path = run_dir / "steps.jsonl"
    if not path.exists() and (run_dir / "tasks").is_dir():
        raise FileNotFoundError(
            f"{run_dir} is a single-task baseline with no weights of its own: plot its per-task runs under "
            f"{run_dir / 'tasks'}/<task>/"
        )
    _read_jsonl(path, required=True)  # a missing log named
    records = taken_steps(path, (prefix,))  # each with every task's weight
    tasks = list(dict.fromkeys(key.removeprefix(prefix) for r in records for key in r if key.startswith(prefix)))
    if not tasks:
        raise ValueError(f"{path} logs no '{prefix}<task>' values: is the run still at its first step?")
    weights = {task: [float(r[f"{prefix}{task}"]) for r in records] for task in tasks}
    return _WeightLog([r["step"] for r in records], weights)


def _check_smooth(smooth: int) -> None:
    if smooth < 1:
        raise ValueError(f"smooth is a window of logged steps and must be >= 1, got {smooth}")


def _draw_weights(axes: Axes, log: _WeightLog, colours: Mapping[str, Any], smooth: int) -> None:
    _check_smooth(smooth)
    lines: dict[str, Sequence[float]] = {}
    for task, values in log.weights.items():
        if smooth > 1:
            axes.plot(log.steps, values, color=colours[task], alpha=0.25, linewidth=0.8)
            values = _moving_average(values, smooth)
        axes.plot(log.steps, values, color=colours[task], linewidth=1.5)
        lines[task] = values
    if _needs_log_scale(lines.values()):
        axes.set_yscale("log")
    axes.grid(alpha=0.3)


def _needs_log_scale(lines: Iterable[Sequence[float]]) -> bool:
    """Whether some line would look flat at zero on a linear scale: every value is positive
    and the largest is at least :data:`LOG_SCALE_RATIO` times the smallest line's median."""
    finite = [[v for v in values if math.isfinite(v)] for values in lines]
    finite = [values for values in finite if values]
    if not finite or min(min(values) for values in finite) <= 0:
        return False
    return max(max(values) for values in finite) >= LOG_SCALE_RATIO * min(statistics.median(v) for v in finite)


def _smoothing_note(smooth: int) -> str:
    return f"\n(moving average over {smooth} steps; raw weights faint)" if smooth > 1 else ""


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at every position (fewer at the start)."""
    sums = [0.0]
    for value in values:
        sums.append(sums[-1] + value)
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def _validation_series(epochs: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """``"task/metric"`` -> (epochs, values) for every ``val/<task>/<metric>`` logged."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in epochs:
        for key, value in record.items():
            if key.startswith("val/") and value is not None:
                xs, ys = series.setdefault(key.removeprefix("val/"), ([], []))
                xs.append(int(record["epoch"]))
                ys.append(float(value))
    return series


def _grid(panels: int) -> tuple[int, int]:
    """Rows and columns for ``panels`` panels: one row up to 3, then near-square, at most
    8 columns."""
    columns = panels if panels <= 3 else min(8, math.ceil(math.sqrt(panels)))
    return math.ceil(panels / columns), columns


def _task_colours(tasks: Sequence[str]) -> dict[str, Any]:
    """A colour per task that depends only on its position, so a task keeps its colour in
    every figure of a run: tab10, then tab20's light shades, then golden-ratio steps
    through a spectrum."""
    colormaps = _matplotlib().colormaps
    light = colormaps["tab20"].colors[1::2]

    def colour(i: int) -> Any:
        if i < 10:
            return colormaps["tab10"](i)
        if i < 20:
            return light[i - 10]
        return colormaps["nipy_spectral"](0.05 + 0.9 * ((i * 0.618034) % 1.0))

    return {task: colour(i) for i, task in enumerate(tasks)}


def _task_legend(where: Figure | Axes, colours: Mapping[str, Any]) -> None:
    """The task legend right of the panels: of a figure (several panels) or of one panel's axes."""
    handles = [_matplotlib().lines.Line2D([], [], color=colour, linewidth=2) for colour in colours.values()]
    if isinstance(where, _matplotlib().axes.Axes):
        _legend_beside(where, handles, list(colours), title="task", ncols=math.ceil(len(colours) / 20))
        return
    where.legend(
        handles, list(colours), loc="outside right upper", title="task", fontsize="small",
        ncols=math.ceil(len(colours) / 20),
    )


def _legend_beside(axes: Axes, handles: Sequence[Any], labels: Sequence[str], **options: Any) -> None:
    """A legend right of one panel, its top at the panel's top: below the figure's title,
    which a figure legend ("outside right upper") reaches up into when its labels are long
    (every task named on one line of a constant weight). The constrained layout makes room."""
    axes.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                fontsize="small", **options)


def _figure(width: float, height: float) -> Figure:
    return _matplotlib().figure.Figure(figsize=(width, height), layout="constrained")


def _matplotlib() -> ModuleType:
    """matplotlib with the submodules used here, or an error saying how to install it."""
    try:
        import matplotlib
        import matplotlib.axes
        import matplotlib.figure
        import matplotlib.lines
        import matplotlib.ticker
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("dynamtl's plots need matplotlib: pip install 'dynamtl[report]'") from error
    return matplotlib


def _save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` atomically (a temporary file, then ``os.replace``): a
    plot drawn while the run itself draws never leaves a torn file. A folder or file that
    cannot be written raises :class:`~dynamtl.train.folder.FolderWriteError`, one line
    naming the file and the cause (disk full, read-only, a file in the way of the folder)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(temporary, dpi=DPI, format=path.suffix.removeprefix(".") or None)
        os.replace(temporary, path)
    except OSError as error:
        from dynamtl.train.folder import write_error

        raise write_error(path, error) from error
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
    return path


def _config(run_dir: Path) -> dict[str, Any]:
    """``config.json`` of ``run_dir``, with the fields the figures read; ``FileNotFoundError``
    or ``ValueError`` naming the file, what is wrong and the fix."""
    path = run_dir / "config.json"
    try:
        return read_table(path, config_problems)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: {run_dir} is not a dynamtl run folder (made by `dynamtl train`)"
            + (f"; `{suggested('resume', run_dir)}` rewrites it from the run's checkpoint"
               if (run_dir / "checkpoints" / "last.pt").is_file() else "")
        ) from None
    except DamagedFile as error:
        repair = (f"`{suggested('resume', run_dir)}` rewrites it from the run's checkpoint"
                  if (run_dir / "checkpoints" / "last.pt").is_file() else "restore it from a backup")
        raise ValueError(f"{error}: {repair}") from error


def _describe(run_dir: Path) -> str:
    """``"auto-lambda on census, seed 0"``; for a task's run of a single-task baseline
    (``<stl run>/tasks/<task>``), ``"single-task baseline of income on census, seed 0"``."""
    config = _config(run_dir)
    parent = run_dir.parent.parent / "config.json"
    if run_dir.parent.name == "tasks" and parent.is_file() and _config(parent.parent).get("method") == "stl":
        return f"single-task baseline of {run_dir.name} on {config['benchmark']}, seed {config['seed']}"
    return f"{config['method']} on {config['benchmark']}, seed {config['seed']}"


def _best_epoch(run_dir: Path) -> int | None:
    """The epoch selected for testing (``results.json``), ``None`` while the run has not
    finished, or when its ``results.json`` is damaged (said in a warning)."""
    path = run_dir / "results.json"
    best_epoch = {"best_epoch": RESULTS_FIELDS["best_epoch"]}
    try:
        best = read_table(path, lambda results: fields_problems(results, best_epoch))["best_epoch"]
    except FileNotFoundError:
        return None
    except DamagedFile as error:
        logger.warning("%s: the selected epoch is not marked", error)
        return None
    return None if best is None else int(best)


def _read_jsonl(path: Path, *, required: bool) -> list[dict[str, Any]]:
    """The records of a JSON-lines log (damaged lines named and left out; a last line
    still being written left out)."""
    if not path.exists():
        if required:
            raise FileNotFoundError(f"{path} is missing" + ("" if (path.parent / "config.json").is_file() else
                                    f": {path.parent} is not a dynamtl run folder (made by `dynamtl train`)"))
        return []
    return read_records(path)
