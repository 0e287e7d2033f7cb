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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamtl.metrics import delta_mtl
from dynamtl.report.tables import compare_table
from dynamtl.train.config import ConfigError, RunConfig, plan
from dynamtl.train.controls import RunSpec, matched_controls, method_specs, weight_columns
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
    base: RunConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    progress: bool = True,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    controls: bool = True,
) -> Comparison:
    """Train (or reuse) every method of ``methods`` and the ``stl`` baselines for every
    seed of ``seeds`` with the settings of ``base`` (its ``method`` and ``seed`` are
    ignored; an option goes to the methods that take it), then write the tables and plots.

    A name of ``variants`` is a method at options of its own
    (:func:`~dynamtl.train.controls.method_specs`). With ``controls`` (default), every run
    whose weights do not average 1 is followed by its matched controls, a Static run at
    its mean weights and an Equal run at its mean learning-rate scale
    (:func:`~dynamtl.train.controls.matched_controls`), rows ``<method>.static`` and
    ``<method>.equal-lr``; the table's ``Σλ`` column is each run's mean weight sum.

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
    configs.update({spec.label: spec.config for spec in method_specs(base, wanted, variants)})
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
    results, labels = [], list(configs)
    for seed in seeds:
        baseline: dict[str, Any] | None = None
        grid = [RunSpec(label, config) for label, config in configs.items()]
        for spec in grid:
            run_dir = _run_dir(out, spec.label, seed)
            result = dict(train_or_reuse(spec.config.replace(seed=seed), run_dir, progress=progress))
            result = weight_columns({**result, "method": spec.label}, run_dir)
            baseline = baseline or result
            result["delta_mtl"] = delta_mtl(_primary(result, metrics), _primary(baseline, metrics), metrics)
            results.append(result)
            if controls and spec.label in configs:
                added = matched_controls(spec, seed, run_dir)
                grid += added
                labels += [c.label for c in added if c.label not in labels]
    results.sort(key=lambda result: labels.index(result["method"]))
    markdown, table = compare_table(results, metrics)
    files = [out / "table.md", out / "table.csv"]
    files[0].write_text(markdown + "\n")
    files[1].write_text(table)
    for seed in seeds:
        runs = {label: _run_dir(out, label, seed) for label in labels[1:] if _run_dir(out, label, seed).is_dir()}
        if runs:
            files += draw_weights_comparison(runs, out / "plots" / f"weights_seed{seed}.png")
    return Comparison(markdown, table, results, files)


def _run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / method / f"seed{seed}"


def _primary(result: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {task: result["test"][task] for task in metrics}
