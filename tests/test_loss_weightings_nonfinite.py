"""A NaN or infinite loss in a plain ``loss = weighting(losses)`` call never makes a loss
weighting's weights NaN silently: a weighting whose weights or state depend on the loss
values refuses it, naming the task, before its state changes (through the shared
``LossWeighting.refuse_bad_losses``); the others keep finite weights."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from dynamtl import registry
from dynamtl.weighting.base import LossWeighting

TASKS = ("a", "b", "c")
REQUIRED = {"weights": {"a": 1.0, "b": 0.5, "c": 2.0}}  # Static's
LOSS_WEIGHTINGS = sorted(
    name for name, method in registry.WEIGHTINGS.items()
    if issubclass(method.factory, LossWeighting) and not method.single_task
)
REFUSING = {"famo", "gls", "stch"}  # the weightings that take the loss values into their weights or state


def build(name: str) -> LossWeighting:
    method = registry.WEIGHTINGS[name]
    context = registry.MethodContext(tasks=TASKS, primary=("a",), auxiliary=True, seed=0)
    needed = {n: REQUIRED[n] for n, d in method.option_defaults().items() if d is inspect.Parameter.empty}
    weighting = method.build(context, needed)
    assert isinstance(weighting, LossWeighting)
    return weighting


def weights_of_a_call(weighting: LossWeighting, values: list[float]) -> torch.Tensor:
    """λ of the plain call ``weighting(losses)``: the gradient of its total with respect to the losses."""
    losses = {t: torch.tensor(v, dtype=torch.float64, requires_grad=True) for t, v in zip(TASKS, values)}
    total = weighting(losses)
    return torch.stack(torch.autograd.grad(total, list(losses.values()), allow_unused=True, materialize_grads=True))


def test_the_loss_weightings_are_all_checked():
    assert set(LOSS_WEIGHTINGS) >= REFUSING and {"equal", "dwa", "uncertainty", "rlw"} <= set(LOSS_WEIGHTINGS)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", LOSS_WEIGHTINGS)
def test_a_non_finite_loss_never_gives_nan_weights_silently(name, bad):
    weighting, before = build(name), build(name)  # the same calls, but for the non-finite one
    for values in ([1.0, 2.0, 0.5], [0.9, 1.8, 0.45]):
        assert torch.isfinite(weights_of_a_call(weighting, values)).all()
        weights_of_a_call(before, values)
    cls = type(weighting).__name__
    try:
        weights = weights_of_a_call(weighting, [0.8, bad, 0.4])
    except ValueError as error:
        assert name in REFUSING, f"{cls} refuses a non-finite loss it could take: {error}"
        assert str(error).startswith(f"{cls} ") and f"finite; got {{'b': {bad}}}: " in str(error)
        after = [[0.7, 1.5, 0.35], [0.6, 1.2, 0.3]]
        for values in after:  # refused before its state changed: as if the call had not been made
            torch.testing.assert_close(weights_of_a_call(weighting, values), weights_of_a_call(before, values))
        return
    assert name not in REFUSING, f"{cls} took the non-finite loss {bad} of task 'b' without a word"
    assert torch.isfinite(weights).all(), f"{cls} gave the weights {weights.tolist()} for a loss {bad}"
    for values in ([0.7, 1.5, 0.35], [0.6, 1.2, 0.3]):
        assert torch.isfinite(weights_of_a_call(weighting, values)).all()
