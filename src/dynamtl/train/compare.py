"""Comparisons: several methods × seeds on one benchmark, against single-task baselines.

Folder layout below ``out``::

    comparison.json            what was compared (benchmark, methods, seeds, shared config)
    runs/<method>/seed<k>/     one run folder per method and seed
    runs/stl/seed<k>/          the single-task baselines of seed k (one run per primary task)
    table.md, table.csv        mean ± std over seeds of the test metrics and of Δ_MTL
    plots/weights_seed<k>.png  the task weights of every method, side by side

Runs are obtained with :func:`~dynamtl.train.runs.train_or_reuse`: running the same
comparison again (or a larger one in the same folder) reuses every finished run and
resumes interrupted ones. Δ_MTL of a run is computed over the primary tasks (every task in
multi-task mode) against the ``stl`` run of the same seed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamtl.metrics import delta_mtl
from dynamtl.registry import RegistryError, parse_method
from dynamtl.report.tables import compare_table
from dynamtl.train.config import ConfigError, RunConfig, plan
from dynamtl.train.folder import write_json_atomic
from dynamtl.train.plots import draw_weights_comparison
from dynamtl.train.runs import train_or_reuse

BASELINE = "stl"


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare`: the tables and every run's results (``delta_mtl``
    filled in), baselines first."""

    markdown: str
    csv: str
    results: list[dict[str, Any]]
    files: list[Path]


def compare(
    base: RunConfig, methods: Sequence[str], seeds: Sequence[int], out: Path, *, progress: bool = True
) -> Comparison:
    """Train (or reuse) every method of ``methods`` and the ``stl`` baselines for every
    seed of ``seeds`` with the settings of ``base`` (its ``method`` and ``seed`` are
    ignored; an option goes to the methods that take it), then write the tables and plots.

    Every configuration is checked before anything is trained: ``ConfigError`` lists
    every problem, including options that no method takes.
    """
    out = Path(out)
    if not methods or not seeds:
        raise ConfigError("compare needs at least one method and one seed: --methods a,b --seeds 0,1")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds are given twice: {list(seeds)}")
    wanted = [m for m in dict.fromkeys(methods) if m != BASELINE]
    configs = {BASELINE: base.replace(method=BASELINE, options={}, noise_task=False)}
    configs.update({m: base.replace(method=m, options=_options_for(m, base.options)) for m in wanted})
    _check_options_used(base.options, wanted)
    checked, problems = {}, []
    for method, config in configs.items():
        try:
            checked[method] = plan(config)
        except ConfigError as error:
            problems.append(f"{method}: {error}")
    if problems:
        raise ConfigError("\n".join(problems))
    reference = checked[BASELINE]
    metrics = {task: list(reference.benchmark.specs[task].metrics) for task in reference.context.primary}
    write_json_atomic(
        out / "comparison.json", {"benchmark": base.benchmark, "methods": list(configs), "seeds": list(seeds),
                                  "config": checked[BASELINE].config.to_dict()},
    )
    results = []
    grid = [(seed, method) for seed in seeds for method in configs]
    for seed in seeds:
        baseline: dict[str, Any] | None = None
        for method, config in configs.items():
            label = f"[{grid.index((seed, method)) + 1}/{len(grid)}] {method} seed {seed}"
            result = dict(train_or_reuse(config.replace(seed=seed), _run_dir(out, method, seed), progress=progress,
                                         label=label))
            baseline = baseline or result
            result["delta_mtl"] = delta_mtl(_primary(result, metrics), _primary(baseline, metrics), metrics)
            results.append(result)
    markdown, table = compare_table(results, metrics)
    files = [out / "table.md", out / "table.csv"]
    files[0].write_text(markdown + "\n")
    files[1].write_text(table)
    return Comparison(markdown, table, results, files + draw_comparison_plots(out))


def draw_comparison_plots(out: Path) -> list[Path]:
    """``out/plots/weights_seed<k>.png`` for every seed of the comparison in ``out`` (as
    ``comparison.json`` lists them): the task weights of its methods side by side."""
    listed = json.loads((Path(out) / "comparison.json").read_text())
    methods = [method for method in listed["methods"] if method != BASELINE]
    files = []
    for seed in listed["seeds"]:
        if methods:
            runs = {method: _run_dir(out, method, seed) for method in methods}
            files += draw_weights_comparison(runs, out / "plots" / f"weights_seed{seed}.png")
    return files


def _run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / method / f"seed{seed}"


def _primary(result: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {task: result["test"][task] for task in metrics}


def _options_for(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    try:
        spec = parse_method(method)
    except RegistryError:
        return dict(options)  # plan() reports the unknown name
    return {key: value for key, value in options.items() if spec.takes(key)}


def _check_options_used(options: Mapping[str, Any], methods: Sequence[str]) -> None:
    specs = []
    for method in methods:
        try:
            specs.append(parse_method(method))
        except RegistryError:
            continue
    unused = [key for key in options if not any(spec.takes(key) for spec in specs)]
    if unused:
        raise ConfigError(f"no compared method takes the option(s) {unused}; methods compared: {list(methods)}")
