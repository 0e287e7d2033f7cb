"""How much of the weight meant for helping a run gave one task: the noise task's share.

A run's *effective weight* of task k at a step is |λₖ αₖ|: the weighting's λₖ
(``weight/<task>`` in ``steps.jsonl``) times the weight αₖ the aggregation gave the weighted
task gradient (``aggregation_weight/<task>``, 1 where the aggregation logs none, as with
``sum``): the shared parameters move along Σₖ αₖ λₖ ∇Lₖ. Its mean over the logged steps
(skipped batches left out) is w̄ₖ. The absolute value counts a negative weight (Auto-Lambda's
λ is unconstrained and may cross 0, "unlearning" a task) as the influence it has on the
shared parameters, not as a weight that cancels a positive one of another step.

The *helpers* of a run are the tasks that are not primary: in auxiliary mode the auxiliary
tasks, in multi-task mode (no primary task) every task. The share of a helper ``t`` is

    s_t = w̄_t / Σ_{h ∈ helpers} w̄_h,

a number in [0, 1] that does not depend on the scale of the weights (Auto-Lambda's λ start
at 0.1, HydaLearn's sum to the number of tasks). Weighting every helper alike gives the
*even share* 1 / |helpers| (Equal: 0.5 with one useful auxiliary task and a noise task); a
method that finds a useless task gives it less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dynamtl.report.records import AGGREGATION_WEIGHT, WEIGHT, config_problems, read_table, taken_steps


@dataclass(frozen=True)
class Share:
    """A helper task's share of a run's mean effective helper weight (``value``) and the
    share an even weighting would give it (``even``, 1 / number of helpers)."""

    value: float
    even: float


def helper_share(run_dir: Path, task: str) -> Share | None:
    """The :class:`Share` of ``task`` in the run folder ``run_dir`` (module docstring), from
    its ``steps.jsonl`` and ``config.json`` (``primary``).

    ``None`` when the run logged no weights (a single-task baseline, no step taken yet) or
    ``task`` is not one of its helper tasks. ``ValueError`` when every helper's mean
    effective weight is 0 (no share is defined), or ``config.json`` is damaged
    (:class:`~dynamtl.report.records.DamagedFile`, naming it). Step records without every
    task's finite weight are named and left out (:func:`~dynamtl.report.records.taken_steps`).
    """
    run_dir = Path(run_dir)
    steps, config = run_dir / "steps.jsonl", run_dir / "config.json"
    if not steps.is_file() or not config.is_file():
        return None
    primary = set(read_table(config, lambda c: config_problems(c, ("primary",))).get("primary") or ())  # named if bad
    totals: dict[str, float] = {}
    count = 0
    for record in taken_steps(steps):  # each with every task's weight; weights all finite
        weights = {k[len(WEIGHT):]: float(v) for k, v in record.items() if k.startswith(WEIGHT)}
        if not weights:
            continue
        count += 1
        for name, weight in weights.items():
            effective = abs(weight * float(record.get(AGGREGATION_WEIGHT + name, 1.0)))
            totals[name] = totals.get(name, 0.0) + effective
    helpers = [name for name in totals if name not in primary]
    if not count or task not in helpers:
        return None
    mean = {name: totals[name] / count for name in helpers}
    if not all(math.isfinite(value) for value in mean.values()):
        raise ValueError(f"{steps}: a helper task's weight is not finite, so {task!r} has no share: {mean}")
    total = math.fsum(mean.values())
    if total <= 0.0:
        raise ValueError(f"{steps}: the helper tasks' mean weights sum to {total}, so {task!r} has no share")
    return Share(mean[task] / total, 1.0 / len(helpers))
