"""Comparison tables of finished runs: one row per method, mean ± std over seeds."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dynamtl.metrics import Metric

MISSING = "–"
DELTA_MTL_DECIMALS = 2
WEIGHT_SUM_DECIMALS = 2


@dataclass(frozen=True)
class _Column:
    """One value column: its title, how to read it from a run's results, how to show it."""

    title: str
    csv_name: str
    higher_is_better: bool | None  # None: a description, neither better nor worse (no arrow, no bold)
    decimals: int
    signed: bool
    read: Callable[[Mapping[str, Any]], float | None]

    @property
    def heading(self) -> str:
        if self.higher_is_better is None:
            return self.title
        return f"{self.title} {'↑' if self.higher_is_better else '↓'}"

    def rounded(self, value: float) -> float:
        return round(value, self.decimals) + 0.0  # + 0.0 turns -0.0 into 0.0

    def text(self, value: float) -> str:
        sign = "+" if self.signed else ""
        return f"{self.rounded(value):{sign}.{self.decimals}f}"


@dataclass(frozen=True)
class _Cell:
    """A column's mean over a method's seeds and its sample standard deviation (``None``
    with a single seed)."""

    mean: float
    std: float | None


def compare_table(
    results: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Sequence[Metric]],
    *,
    split: str = "test",
    decimals: int = 4,
) -> tuple[str, str]:
    """Compare methods over seeds; returns ``(markdown, csv)``.

    ``results`` are the ``results.json`` dicts of finished runs of one benchmark
    (``{"benchmark", "method", "seed", "test": {task: {metric: value}}, "val": …,
    "delta_mtl": float | None}``); ``metrics`` maps each task to show to its metrics.

    Rows and columns:

    * one row per ``"method"``, in the order methods first appear in ``results``;
    * ``seeds``: how many runs of the method there are;
    * one column ``task/metric`` per entry of ``metrics``, read from ``result[split]``;
    * a column ``Δ_MTL (%)`` (higher is better) when any run has a ``delta_mtl``;
    * a column ``Σλ``, the run's mean over its steps of the sum of its task weights
      (``"mean_weight_sum"``, 2 decimals, never bold), when any run has one: a weighting
      whose weights do not sum to the number of tasks also changes the learning rate;
    * after it, ``noise share`` (``"noise_share"``, 2 decimals, never bold) when any run has
      one: the noise task's share of the helper tasks' weight
      (:func:`~dynamtl.report.shares.helper_share`; 0.5 for Equal with one other helper).

    Markdown cells are ``mean ± std`` with ``decimals`` decimals for metrics and
    2 decimals and an explicit sign for Δ_MTL (``+1.25 ± 0.30``); std is the sample standard
    deviation (n − 1), and a method with one seed shows the mean alone. A column's best
    cell is in bold: the largest rounded mean, or the smallest where lower is better, as the
    arrow after the column title says (↑ / ↓); every cell tied with it after rounding is bold
    too. A value that no run of a method has is ``–``. Numbers are right-aligned.

    The CSV has the columns ``method, seeds`` then ``<column> mean, <column> std`` for every
    column (Δ_MTL's are ``delta_mtl mean, delta_mtl std``) at full precision, with an empty
    field for a missing value or the std of a single seed.

    Raises ``ValueError`` when the runs come from different benchmarks, a method has two
    runs of the same seed, or some seeds of a method have a value that others lack.

    >>> from dynamtl.metrics import ACCURACY, MAE
    >>> runs = [{"benchmark": "toy", "method": method, "seed": seed, "delta_mtl": None,
    ...          "test": {"a": {"accuracy": acc}, "b": {"mae": mae}}}
    ...         for method, seed, acc, mae in [("equal", 0, 0.80, 1.2), ("equal", 1, 0.90, 1.0),
    ...                                        ("famo", 0, 0.88, 1.3)]]
    >>> markdown, csv_text = compare_table(runs, {"a": [ACCURACY], "b": [MAE]})
    >>> print(markdown)
    | method | seeds |    a/accuracy ↑ |             b/mae ↓ |
    | :----- | ----: | --------------: | ------------------: |
    | equal  |     2 | 0.8500 ± 0.0707 | **1.1000 ± 0.1414** |
    | famo   |     1 |      **0.8800** |              1.3000 |
    >>> print(csv_text.splitlines()[0])
    method,seeds,a/accuracy mean,a/accuracy std,b/mae mean,b/mae std
    """
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    columns = [
        _Column(
            title=f"{task}/{metric.name}",
            csv_name=f"{task}/{metric.name}",
            higher_is_better=metric.higher_is_better,
            decimals=decimals,
            signed=False,
            read=_metric_reader(split, task, metric),
        )
        for task, task_metrics in metrics.items()
        for metric in task_metrics
    ]
    if any(result.get("delta_mtl") is not None for result in results):
        delta = _Column(
            title="Δ_MTL (%)",
            csv_name="delta_mtl",
            higher_is_better=True,
            decimals=DELTA_MTL_DECIMALS,
            signed=True,
            read=lambda result: result.get("delta_mtl"),
        )
        columns.append(delta)
    if any(result.get("mean_weight_sum") is not None for result in results):
        columns.append(_Column(
            title="Σλ", csv_name="mean_weight_sum", higher_is_better=None, decimals=WEIGHT_SUM_DECIMALS, signed=False,
            read=lambda result: result.get("mean_weight_sum"),
        ))  # fmt: skip
    if any(result.get("noise_share") is not None for result in results):
        columns.append(_Column(
            title="noise share", csv_name="noise_share", higher_is_better=None, decimals=WEIGHT_SUM_DECIMALS,
            signed=False, read=lambda result: result.get("noise_share"),
        ))  # fmt: skip
    runs = _runs_by_method(results)
    cells = {method: [_cell(method, column, method_runs) for column in columns] for method, method_runs in runs.items()}
    return _markdown(columns, runs, cells), _csv(columns, runs, cells)


def _metric_reader(split: str, task: str, metric: Metric) -> Callable[[Mapping[str, Any]], float | None]:
    def read(result: Mapping[str, Any]) -> float | None:
        if split not in result:
            raise ValueError(
                f"the results of {result.get('method')!r} seed {result.get('seed')!r} have no {split!r} split: "
                f"pass split= one of {sorted(k for k, v in result.items() if isinstance(v, dict))}"
            )
        return result[split].get(task, {}).get(metric.name)

    return read


def _runs_by_method(results: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    if not results:
        raise ValueError("compare_table needs at least one result")
    benchmarks = sorted({str(result["benchmark"]) for result in results})
    if len(benchmarks) > 1:
        raise ValueError(f"results from several benchmarks {benchmarks}: make one table per benchmark")
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        method_runs = runs.setdefault(str(result["method"]), [])
        if any(run["seed"] == result["seed"] for run in method_runs):
            raise ValueError(
                f"two results of method {result['method']!r} with seed {result['seed']!r}: keep one run per seed"
            )
        method_runs.append(result)
    return runs


def _cell(method: str, column: _Column, runs: Sequence[Mapping[str, Any]]) -> _Cell | None:
    values = {run["seed"]: column.read(run) for run in runs}
    present = [float(v) for v in values.values() if v is not None]
    if not present:
        return None
    if len(present) < len(values):
        lacking = [seed for seed, v in values.items() if v is None]
        raise ValueError(
            f"method {method!r} has {column.title} for some seeds but not for seeds {lacking}: "
            "rerun those seeds or leave them out"
        )
    std = statistics.stdev(present) if len(present) > 1 else None
    return _Cell(statistics.fmean(present), std)


def _markdown(
    columns: Sequence[_Column], runs: Mapping[str, Sequence[object]], cells: Mapping[str, Sequence[_Cell | None]]
) -> str:
    best = [_best(column, [row[i] for row in cells.values()]) for i, column in enumerate(columns)]
    body = []
    for method, row in cells.items():
        texts = []
        for column, cell, best_mean in zip(columns, row, best):
            if cell is None:
                texts.append(MISSING)
                continue
            text = column.text(cell.mean)
            if cell.std is not None:
                text += f" ± {cell.std:.{column.decimals}f}"
            texts.append(f"**{text}**" if column.rounded(cell.mean) == best_mean else text)
        body.append([method, str(len(runs[method])), *texts])
    header = ["method", "seeds", *(column.heading for column in columns)]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(texts: Sequence[str]) -> str:
        padded = [texts[0].ljust(widths[0]), *(t.rjust(w) for t, w in zip(texts[1:], widths[1:]))]
        return "| " + " | ".join(padded) + " |"

    rule = "| :" + "-" * (widths[0] - 1) + " | " + " | ".join("-" * (w - 1) + ":" for w in widths[1:]) + " |"
    return "\n".join([line(header), rule, *(line(texts) for texts in body)])


def _best(column: _Column, cells: Sequence[_Cell | None]) -> float | None:
    means = [column.rounded(cell.mean) for cell in cells if cell is not None]
    if not means or column.higher_is_better is None:
        return None
    return max(means) if column.higher_is_better else min(means)


def _csv(
    columns: Sequence[_Column], runs: Mapping[str, Sequence[object]], cells: Mapping[str, Sequence[_Cell | None]]
) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    stats = (f"{column.csv_name} {stat}" for column in columns for stat in ("mean", "std"))
    writer.writerow(["method", "seeds", *stats])
    for method, row in cells.items():
        fields: list[object] = [method, len(runs[method])]
        for cell in row:
            fields += ["", ""] if cell is None else [cell.mean, "" if cell.std is None else cell.std]
        writer.writerow(fields)
    return out.getvalue()
