"""benchmarks/step_cost.py times every registered method, and every entry takes a real step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_cost

from dynamtl.registry import AGGREGATIONS, WEIGHTINGS


def test_every_registered_method_is_timed_by_its_own_class() -> None:
    timed = {name: step_cost.METHODS[name]() for name in step_cost.METHODS}
    for entry in [*WEIGHTINGS.values(), *AGGREGATIONS.values()]:
        if entry.single_task or entry.name == "sum":
            continue
        name = entry.factory.__name__
        assert name in timed, f"{entry.name!r} ({name}) is registered but benchmarks/step_cost.py does not time it"
        weighting, aggregation = timed[name]
        built = aggregation if entry.kind == "aggregation" else weighting
        assert type(built) is entry.factory, f"{name} times a {type(built).__name__}, not {entry.factory.__name__}"


def test_pass_counts_follow_the_registry() -> None:
    assert step_cost.PASSES["Equal"] == (1, 0, 1)
    assert step_cost.PASSES["STCH"] == (1, 0, 1)
    assert step_cost.PASSES["UPGrad"] == (1, 0, 3)  # T = 3 per-task backward passes
    assert step_cost.PASSES["DBMTL"] == (1, 0, 3)
    assert "AutoLambda" in step_cost.PASSES and step_cost.PASSES["AutoLambda"] == (2, 2, 3)
    assert set(step_cost.PASSES) <= set(step_cost.METHODS)


@pytest.mark.parametrize("method", list(step_cost.METHODS))
def test_every_entry_takes_a_finite_step_that_moves_the_model(method: str) -> None:
    mtl, train, meta = step_cost.setup("mlp", method)
    before = [p.detach().clone() for p in mtl.objective.params.values()]
    for i in range(2):
        step_cost._step(mtl, train, meta, i)
    after = list(mtl.objective.params.values())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after)), f"{method} did not move the shared model"
