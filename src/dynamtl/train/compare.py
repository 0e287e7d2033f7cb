"""Comparisons: several methods × seeds on one benchmark, against single-task baselines.

Folder layout below ``out``::

    comparison.json            what was compared (benchmark, methods, seeds, shared config)
    runs/<method>/seed<k>/     one run folder per method and seed
    runs/stl/seed<k>/          the single-task baselines of seed k (one run per primary task)
    table.md, table.csv        mean ± std over seeds of the test metrics and of Δ_MTL
    plots/weights_seed<k>.png  the task weights of every method, side by side
    plots/noise-share.png      with a noise task: its share of the helper weight per method

The runs are a grid, a plain list of :class:`~dynamtl.train.grid.GridRun` (:func:`grid`),
trained by an engine of :mod:`dynamtl.train.grid` (worker processes by default); the
matched controls of the finished runs are a second grid. Every run is
:func:`~dynamtl.train.runs.train_or_reuse`: running the same comparison again (or a larger
one in the same folder) reuses every finished run and resumes interrupted ones. Δ_MTL of a
run is computed over the primary tasks (every task in multi-task mode) against the ``stl``
run of the same seed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dynamtl.benchmarks.noise import NOISE
from dynamtl.metrics import delta_mtl
from dynamtl.report.records import fields_problems, read_table
from dynamtl.report.shares import helper_share
from dynamtl.report.tables import compare_table
from dynamtl.train.config import ConfigError, RunConfig, RunPlan, plan
from dynamtl.train.controls import (
    RunSpec,
    matched_controls,
    method_specs,
    weight_columns,
)
from dynamtl.train.folder import RunFolder, write_atomic, write_json_atomic
from dynamtl.train.grid import Engine, GridRun, LocalEngine, Outcome, Say
from dynamtl.train.plots import draw_share_comparison, draw_weights_comparison
from dynamtl.train.threads import ThreadChoice

BASELINE = "stl"
logger = logging.getLogger("dynamtl")


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare`: the tables and every finished run's results
    (``delta_mtl`` filled in; ``None`` where the seed's baseline failed), baselines first;
    ``failed``: ``"NAME: ERROR"`` of every run that failed."""

    markdown: str
    csv: str
    results: list[dict[str, Any]]
    files: list[Path]
    failed: list[str] = field(default_factory=list)


class RunsFailed(RuntimeError):
    """Some runs of a comparison failed; ``comparison`` holds the tables of the others."""

    def __init__(self, comparison: Comparison) -> None:
        self.comparison = comparison
        failed = comparison.failed
        super().__init__(
            f"{len(failed)} run(s) failed:\n" + "\n".join(f"  - {line}" for line in failed)
            + "\nthe table holds the other runs; run the same comparison again to retry the failed ones "
            "(finished runs are reused)"
        )


def compare(
    base: RunConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    progress: bool = True,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    controls: bool = True,
    engine: Engine | None = None,
    say: Say | None = None,
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

    The runs are trained by ``engine`` (default :class:`~dynamtl.train.grid.LocalEngine`:
    one worker process per usable CPU). Every run has ``base.threads`` torch threads; when
    that is ``None``, the count this comparison folder was started with
    (``comparison.json``), else the engine's choice for the runs it trains at once
    (:func:`~dynamtl.train.threads.choose_threads`). With the same threads, the tables do
    not depend on the engine or the number of jobs. ``say`` receives a line about the
    threads, and one per run (with ``progress``) or per failure.

    Every configuration is checked before anything is trained: ``ConfigError`` lists
    every problem, including options that no method takes. ``RunsFailed`` (holding the
    comparison of the other runs) when any run failed, after the tables are written.
    """
    out = Path(out)
    plan_comparison(base, methods, seeds, variants)  # nothing is started before every run is checked
    engine = engine or LocalEngine()
    say = say or (lambda line: None)
    wanted = [m for m in dict.fromkeys(methods) if m != BASELINE]
    jobs = engine.jobs_for((len(wanted) + 1) * len(seeds))
    if base.threads is None:
        choice = _threads_kept(out) or engine.default_threads(jobs)
        base = base.replace(threads=choice.threads)
        say(f"torch threads: {choice.threads} per run, {jobs} run(s) at once {engine.where} ({choice.reason})")
    else:
        say(f"torch threads: {base.threads} per run, {jobs} run(s) at once {engine.where}")
    checked = plan_comparison(base, methods, seeds, variants)
    configs = {label: run.config for label, run in _configs(base, wanted, variants).items()}
    reference = checked[BASELINE]
    metrics = {task: list(reference.benchmark.specs[task].metrics) for task in reference.context.primary}
    write_json_atomic(
        out / "comparison.json", {"benchmark": base.benchmark, "methods": list(configs), "seeds": list(seeds),
                                  "config": checked[BASELINE].config.to_dict()},
    )
    outcomes = [_with_logs(outcome) for outcome in engine.run(grid(configs, seeds, out), out, progress=progress,
                                                              say=say)]
    if controls:
        matched = _controls(outcomes, configs, out)
        if matched:
            say(f"matched controls: {len(matched)} run(s)")
            outcomes += [_with_logs(outcome) for outcome in engine.run(matched, out, progress=progress, say=say)]
    labels = list(dict.fromkeys([*configs, *(o.spec.label for o in outcomes)]))
    results = sorted(_with_delta_mtl(outcomes, metrics), key=lambda result: labels.index(result["method"]))
    files: list[Path] = []
    markdown = table = ""
    if results:
        markdown, table = compare_table(results, metrics)
        files = [out / "table.md", out / "table.csv"]
        write_atomic(files[0], (markdown + "\n").encode())  # a full disk: one line naming it (FolderWriteError)
        write_atomic(files[1], table.encode())
    finished = {(o.spec.label, o.spec.config.seed): o.spec.folder for o in outcomes if o.results is not None}
    files += _draw_weight_plots(out, labels, seeds, finished)
    share_figure = _draw_share_plot(out, list(configs), seeds, finished)
    if share_figure:
        say(f"which methods down-weighted the noise task: {share_figure[0]}")
    files += share_figure
    comparison = Comparison(markdown, table, results, files,
                            [f"{o.spec.name}: {o.error}" for o in outcomes if o.error is not None])
    if comparison.failed:
        raise RunsFailed(comparison)
    return comparison


def plan_comparison(
    base: RunConfig, methods: Sequence[str], seeds: Sequence[int],
    variants: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, RunPlan]:
    """The checked plan of every row of a comparison (``stl`` first), keyed by label;
    ``ConfigError`` listing every problem: of the methods and seeds, of the variants, and
    of every row's configuration. A problem every row has (a setting of ``base``: an
    unknown benchmark, ``epochs`` 0) is listed once, the others after their row's label."""
    problems = []
    if not methods:
        problems.append("give the methods to compare: --methods auto-lambda,hydalearn,equal")
    if not seeds:
        problems.append("give the seeds to compare: --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        problems.append(f"seeds are given twice: {list(seeds)}")
    try:
        configs = _configs(base, [m for m in dict.fromkeys(methods) if m != BASELINE], variants)
    except ConfigError as error:
        problems += error.problems
        configs = {BASELINE: RunSpec(BASELINE, base.replace(method=BASELINE, options={}, noise_task=False))}
    checked, found = {}, {}
    for label, spec in configs.items():
        try:
            checked[label] = plan(spec.config)
        except ConfigError as error:
            found[label] = error.problems
    shared = [p for p in next(iter(found.values()), ()) if len(found) == len(configs)
              and all(p in row for row in found.values())]
    problems += shared + [f"{label}: {p}" for label, row in found.items() for p in row if p not in shared]
    if problems:
        raise ConfigError(*problems, heading="invalid comparison")
    return checked


def _configs(
    base: RunConfig, methods: Sequence[str], variants: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, RunSpec]:
    """The rows of a comparison by label: the ``stl`` baselines, then ``methods``."""
    rows = {BASELINE: RunSpec(BASELINE, base.replace(method=BASELINE, options={}, noise_task=False))}
    rows.update({spec.label: spec for spec in method_specs(base, methods, variants)})
    return rows


def _with_logs(outcome: Outcome) -> Outcome:
    """``outcome`` failed, naming the file and the fix, when its run finished but its
    ``steps.jsonl`` is gone (the weights that its Σλ, matched controls and plots need are
    lost; a single-task baseline has none); a warning when its ``epochs.jsonl`` or
    ``events.jsonl`` is gone (history that the comparison does not read)."""
    folder = RunFolder(outcome.spec.folder)
    if outcome.results is None or outcome.results.get("single_task"):
        return outcome
    for log in (folder.epochs, folder.events):
        if not log.is_file():
            logger.warning("%s is missing: that history of %s is lost; its results are intact and used",
                           log, outcome.spec.name)
    if folder.steps.is_file():
        return outcome
    return replace(outcome, results=None, error=(
        f"{folder.steps} is missing: the run finished, but its weights (for its Σλ, matched controls and weight plots) "
        f"are lost; delete {folder.root} and run the same command again to train it anew"))


def _listed_problems(listed: dict[str, Any]) -> list[str]:
    return fields_problems(listed, {
        "methods": ("a list of method labels", lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v)),
        "seeds": ("a list of seeds", lambda v: isinstance(v, list) and all(type(seed) is int for seed in v)),
    })


def draw_comparison_plots(out: Path) -> list[Path]:
    """Redraw ``out/plots/weights_seed<k>.png`` (and ``noise-share.png``, with a noise
    task) of the comparison in ``out`` from its finished runs (the methods and seeds of
    ``comparison.json`` first, then any other row, such as matched controls, found in
    ``out/runs``). ``FileNotFoundError`` or ``ValueError`` naming a missing or damaged
    ``comparison.json``."""
    out = Path(out)
    listed = read_table(out / "comparison.json", _listed_problems)
    found = sorted(folder.name for folder in (out / "runs").iterdir() if folder.is_dir())
    labels = list(dict.fromkeys([*listed["methods"], *found]))
    finished = {(label, seed): _run_dir(out, label, seed) for label in labels for seed in listed["seeds"]
                if (_run_dir(out, label, seed) / "results.json").is_file()}
    return (_draw_weight_plots(out, labels, listed["seeds"], finished)
            + _draw_share_plot(out, listed["methods"], listed["seeds"], finished))


def _draw_weight_plots(
    out: Path, labels: Sequence[str], seeds: Sequence[int], finished: Mapping[tuple[str, int], Path]
) -> list[Path]:
    """One figure per seed with the task weights of the finished runs of ``labels`` but
    the baseline (``(label, seed) -> run folder`` in ``finished``)."""
    files: list[Path] = []
    for seed in seeds:
        runs = {label: finished[label, seed] for label in labels if label != BASELINE and (label, seed) in finished}
        if runs:
            files += draw_weights_comparison(runs, out / "plots" / f"weights_seed{seed}.png")
    return files


def _draw_share_plot(
    out: Path, rows: Sequence[str], seeds: Sequence[int], finished: Mapping[tuple[str, int], Path]
) -> list[Path]:
    """``out/plots/noise-share.png``: the noise task's share of the helper weight in every
    finished run of ``rows`` (the compared methods, not their controls, whose weights are
    their methods' means), when the runs have a noise task; else nothing."""
    shares = {}
    for label in rows:
        found = [helper_share(finished[label, seed], NOISE) for seed in seeds if (label, seed) in finished]
        if label != BASELINE and any(found):
            shares[label] = [share for share in found if share is not None]
    return draw_share_comparison(shares, NOISE, out / "plots" / "noise-share.png") if shares else []


def grid(configs: Mapping[str, RunConfig], seeds: Sequence[int], out: Path) -> list[GridRun]:
    """The runs of a comparison, in the order of its table: for every seed, every
    ``label -> config`` of ``configs`` (the baseline first) at that seed, in
    ``out/runs/<label>/seed<k>``."""
    return [GridRun(label, config.replace(seed=seed), _run_dir(out, label, seed))
            for seed in seeds for label, config in configs.items()]


def _controls(outcomes: Sequence[Outcome], configs: Mapping[str, RunConfig], out: Path) -> list[GridRun]:
    """The matched controls of the finished runs of ``configs``' rows, in their order."""
    return [
        GridRun(control.label, control.config, _run_dir(out, control.label, outcome.spec.config.seed))
        for outcome in outcomes if outcome.results is not None and outcome.spec.label in configs
        for control in matched_controls(RunSpec(outcome.spec.label, configs[outcome.spec.label]),
                                        outcome.spec.config.seed, outcome.spec.folder)
    ]


def _with_delta_mtl(outcomes: Sequence[Outcome], metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The results of the finished runs (``method``: the run's label, with its mean weight
    sum), each with its Δ_MTL against the baseline of its seed (``None`` if that failed)."""
    baselines = {o.spec.config.seed: o.results for o in outcomes if o.spec.label == BASELINE and o.results}
    results = []
    for outcome in outcomes:
        if outcome.results is None:
            continue
        result = weight_columns({**outcome.results, "method": outcome.spec.label}, outcome.spec.folder)
        baseline = baselines.get(outcome.spec.config.seed)
        result["delta_mtl"] = (
            delta_mtl(_primary(result, metrics), _primary(baseline, metrics), metrics) if baseline else None
        )
        results.append(result)
    return results


def _threads_kept(out: Path) -> ThreadChoice | None:
    """The thread count of the comparison already in ``out``, if any."""
    path = out / "comparison.json"
    try:
        threads = json.loads(path.read_text())["config"]["threads"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ThreadChoice(int(threads), f"kept from {path}") if isinstance(threads, int) else None


def _run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / method / f"seed{seed}"


def _primary(result: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {task: result["test"][task] for task in metrics}
