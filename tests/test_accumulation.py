"""Gradient accumulation: k calls of ``backward(micro_batch, micro_batches=k)`` then one
``optimizer.step()``.

Loss-level weightings with Sum: exactly one step on the concatenated batch. Gradient
aggregations: the mean of the k micro-batches' aggregated gradients (their documented
meaning). Weightings that assume one optimizer step per backward are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dynamtl as dm

K, MICRO = 4, 8


def split(batch, k: int = K):
    x, targets = batch
    return [(x[i::k], {t: y[i::k] for t, y in targets.items()}) for i in range(k)]


def make_batch(seed: int, n: int = K * MICRO):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return x, {t: torch.randn(n, generator=g, dtype=torch.float64) + i for i, t in enumerate(("a", "b"))}


def build(make_model, method, scaler=None):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tasks = dm.Tasks({"a": F.mse_loss, "b": F.mse_loss})
    return model, dm.MultiTask(model, tasks, opt, scaler=scaler, **method())


LOSS_LEVEL = {
    "equal": lambda: {"weighting": dm.Equal()},
    "static": lambda: {"weighting": dm.Static({"a": 0.3, "b": 2.0})},
    "uncertainty": lambda: {"weighting": dm.Uncertainty()},
    "dwa": lambda: {"weighting": dm.DWA()},
}


@pytest.mark.parametrize("method", list(LOSS_LEVEL))
def test_micro_batches_of_loss_level_weightings_equal_one_step_on_the_whole_batch(make_model, method) -> None:
    whole, mtl_whole = build(make_model, LOSS_LEVEL[method])
    accumulated, mtl = build(make_model, LOSS_LEVEL[method])
    for seed in range(3):  # momentum and Uncertainty's s carry over: three optimizer steps
        batch = make_batch(seed)
        mtl_whole.step(batch)
        mtl.optimizer.zero_grad()
        for micro in split(batch):
            mtl.backward(micro, micro_batches=K)
        mtl.optimizer.step()
    for p, q in zip(accumulated.parameters(), whole.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    for p, q in zip(mtl.weighting.parameters(), mtl_whole.weighting.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_micro_batches_under_loss_scaling_equal_the_unscaled_accumulation(make_model) -> None:
    plain_model, plain = build(make_model, LOSS_LEVEL["equal"])
    model, scaled = build(make_model, LOSS_LEVEL["equal"], torch.amp.GradScaler("cpu", init_scale=2.0**12))
    batch = make_batch(0)
    for micro in split(batch):
        plain.backward(micro, micro_batches=K)
        scaled.backward(micro, micro_batches=K)
    for p, q in zip(model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(p.grad, 2.0**12 * q.grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("aggregation", [lambda: dm.CAGrad(c=0.4), lambda: dm.MGDA(), lambda: dm.IMTLG()])
def test_micro_batches_of_a_gradient_aggregation_average_the_aggregated_gradients(make_model, aggregation) -> None:
    """The documented meaning: .grad is the mean over micro-batches of each one's aggregated
    gradient (an aggregation is not linear, so not that of the whole batch)."""
    model, mtl = build(make_model, lambda: {"aggregation": aggregation()})
    micro = split(make_batch(0))
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for m in micro:
        mtl.optimizer.zero_grad()
        mtl.backward(m)
        for e, p in zip(expected, model.parameters()):
            e += p.grad / K
    mtl.optimizer.zero_grad()
    for m in micro:
        mtl.backward(m, micro_batches=K)
    for e, p in zip(expected, model.parameters()):
        torch.testing.assert_close(p.grad, e, rtol=0, atol=1e-12)
    whole_model, whole = build(make_model, lambda: {"aggregation": aggregation()})
    whole.backward(make_batch(0))
    assert any(not torch.allclose(p.grad, q.grad) for p, q in zip(model.parameters(), whole_model.parameters()))


def test_auto_lambda_updates_lambda_once_per_micro_batch(make_model) -> None:
    _, mtl = build(make_model, lambda: {"weighting": dm.AutoLambda(lr=0.01)})
    for i, m in enumerate(split(make_batch(0))):
        mtl.backward(m, meta_batch=split(make_batch(1))[i], micro_batches=K)
    assert mtl.steps == K and mtl.weighting.meta_optimizer.state[mtl.weighting.lambdas]["step"] == K


def test_a_weighting_that_needs_one_step_per_backward_refuses_accumulation(make_model) -> None:
    _, mtl = build(make_model, lambda: {"weighting": dm.AutoLambda(order="lagged")})
    with pytest.raises(ValueError, match="order='lookahead'"):
        mtl.backward(split(make_batch(0))[0], meta_batch=make_batch(1), micro_batches=K)
    with pytest.raises(ValueError, match="micro_batches must be >= 1"):
        mtl.backward(make_batch(0), meta_batch=make_batch(1), micro_batches=0)
