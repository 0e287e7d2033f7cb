"""The runs of a comparison: named variants of methods, and the controls that make a
weighting's comparison fair when its weights do not average 1.

**Why controls.** The loss Σᵢ λᵢ Lᵢ trains task i at λᵢ times the learning rate under SGD
(and changes the balance between tasks under any optimizer). A weighting whose weights do
not average 1 therefore differs from Equal in two ways at once: *which* tasks it favours
and *how large* a step it takes. Auto-Lambda starts every λ at 0.1 (a 10× smaller step
under SGD); HydaLearn's weights sum to T, so in auxiliary learning the main task trains at
up to T times the learning rate. A method that beats Equal may only have found a better
learning rate. Two controls separate the effects, run on the same seed with every other
setting equal:

* ``<label>.static``: :class:`~dynamtl.weighting.static.Static` with each task's weight
  fixed at the method's mean weight over the steps of that seed's run (the same mean
  weights, no dynamics): a dynamic method must beat it to show that its *dynamics* help;
* ``<label>.equal-lr``: Equal with the learning rate multiplied by the method's mean
  *counted* weight (the mean over the steps and over the counted tasks: the primary tasks in
  auxiliary mode, all tasks in multi-task mode): the learning-rate-matched Equal. Only for
  SGD: Adam and AdamW divide the gradient by its running scale, so a common factor on the
  loss leaves their steps unchanged (up to their ε), and Equal itself is the matched one.

They are added for every run whose weights change during training and whose mean weight
of some task differs from 1 by more than :data:`TOLERANCE` (relative); ``.equal-lr`` only
when the mean counted weight itself differs from 1 by more than that. Constant weightings
(Equal, Static, controls themselves) get none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamtl.benchmarks.noise import NOISE
from dynamtl.registry import OptionValue, RegistryError, parse_method
from dynamtl.report.records import WEIGHT, taken_steps
from dynamtl.report.shares import helper_share
from dynamtl.train.config import ConfigError, RunConfig, plan

TOLERANCE = 0.05
SCALE_INVARIANT = ("adam", "adamw")


@dataclass(frozen=True)
class RunSpec:
    """One row of a comparison: its ``label`` (the table's method column and the run
    folder's name) and the config of its runs (the seed is set per run)."""

    label: str
    config: RunConfig


@dataclass(frozen=True)
class WeightSummary:
    """What a run's ``steps.jsonl`` says about its weights: each task's mean weight over the
    steps, the mean of Σᵢ λᵢ over the steps, and whether the weights ever changed."""

    mean: dict[str, float]
    mean_sum: float
    constant: bool


def method_specs(
    base: RunConfig, methods: Sequence[str], variants: Mapping[str, Mapping[str, OptionValue]] | None = None
) -> list[RunSpec]:
    """The rows of ``methods``: a name of ``variants`` is that variant, any other name a
    method spec run with the options of ``base`` that it takes.

    A variant is ``label -> {"method": SPEC, option: value, …}``: the method with these
    options on top of ``base``'s (``{"al-lr1e-3": {"method": "auto-lambda", "lr": 1e-3}}``);
    it lets one comparison hold a method at several settings, e.g. a Static at chosen
    weights. ``ConfigError`` for a variant without ``method`` and for options (of ``base``
    or of a variant) that no compared method takes, listing every such problem.
    """
    variants = dict(variants or {})
    unused = [name for name in variants if name not in methods]
    problems = [f"variant(s) {unused} are defined but not in methods {list(methods)}: add them or drop them"
                ] if unused else []
    specs, taken = [], []
    for name in dict.fromkeys(methods):
        variant = dict(variants.get(name, {}))
        method = variant.pop("method", name if name not in variants else None)
        if not isinstance(method, str):
            problems.append(f"variant {name!r} names no method: give it method = \"auto-lambda\" (a method spec)")
            continue
        spec = _parsed(method, variant)
        problems += [f"variant {name!r}: method {method!r} takes no option {key!r}"
                     for key in variant if spec is not None and not spec.takes(key)]
        options = {**{k: v for k, v in base.options.items() if spec is None or spec.takes(k)}, **variant}
        taken.append(spec)
        specs.append(RunSpec(name, base.replace(method=method, options=options)))
    unused_options = [key for key in base.options if not any(spec is None or spec.takes(key) for spec in taken)]
    if unused_options:  # (an option may be an unknown method's: plan() reports that method)
        problems.append(f"no compared method takes the option(s) {unused_options}; methods compared: {list(methods)}")
    if problems:
        raise ConfigError(*problems)
    return specs


def read_weights(run_dir: Path) -> WeightSummary | None:
    """The :class:`WeightSummary` of the run in ``run_dir``, or ``None`` when it logged no
    weights (``stl``, or no step taken). Skipped steps are left out."""
    path = Path(run_dir) / "steps.jsonl"
    if not path.is_file():
        return None
    rows = []
    for record in taken_steps(path):  # damaged lines and steps without every task's weight named and left out
        weights = {k[len(WEIGHT):]: float(v) for k, v in record.items() if k.startswith(WEIGHT)}
        if weights:
            rows.append(weights)
    if not rows:
        return None
    tasks = list(rows[0])
    mean = {task: math.fsum(row[task] for row in rows) / len(rows) for task in tasks}
    constant = all(row == rows[0] for row in rows)
    return WeightSummary(mean, math.fsum(mean.values()), constant)


def matched_controls(spec: RunSpec, seed: int, run_dir: Path) -> list[RunSpec]:
    """The controls of ``spec``'s finished run of ``seed`` in ``run_dir`` (see the module
    docstring): ``[]`` when its weights are constant or average 1 within
    :data:`TOLERANCE` for every task."""
    summary = read_weights(run_dir)
    if summary is None or summary.constant:
        return []
    if all(abs(w - 1.0) <= TOLERANCE for w in summary.mean.values()):
        return []
    resolved = plan(spec.config.replace(seed=seed)).config
    counted = (
        list(resolved.primary) if resolved.mode == "auxiliary" and resolved.primary else list(resolved.tasks or ())
    )
    scale = math.fsum(summary.mean[t] for t in counted) / len(counted)
    base = resolved.replace(options={}, seed=seed)
    controls = [RunSpec(f"{spec.label}.static", base.replace(method="static", options={"weights": summary.mean}))]
    if abs(scale - 1.0) > TOLERANCE and resolved.optimizer not in SCALE_INVARIANT:
        assert resolved.lr is not None
        controls.append(RunSpec(f"{spec.label}.equal-lr", base.replace(method="equal", lr=resolved.lr * scale)))
    return controls


def weight_columns(result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``result`` with ``mean_weight_sum`` (the mean over the steps of Σᵢ λᵢ, ``None``
    without weights) and ``noise_share`` (the noise task's share of the helper tasks'
    weight, :func:`~dynamtl.report.shares.helper_share`; ``None`` without a noise task or
    weights) for the comparison table."""
    summary = read_weights(run_dir)
    share = helper_share(run_dir, NOISE)
    return {**result, "mean_weight_sum": None if summary is None else summary.mean_sum,
            "noise_share": None if share is None else share.value}


def _parsed(method: str, options: Mapping[str, OptionValue]) -> Any:
    """The parsed method (with ``options`` where they parse, for methods that need some),
    or ``None`` for a name that plan() reports with the valid ones."""
    for given in (options, {}):
        try:
            return parse_method(method, given)
        except RegistryError:
            continue
    return None
