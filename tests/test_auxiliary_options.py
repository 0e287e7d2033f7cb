"""Options of Auto-Lambda and HydaLearn for auxiliary learning: meta batches with the
primary targets only, λ with a fixed mean, the failure message naming a grown λ, and
HydaLearn's smoothed weights; the warning on a negative λ whose task's loss explodes."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm
from dynamtl.step import NonFiniteLossError

TASKS = ("main", "aux1", "aux2")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(3, 6), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def _batch(seed: int, n: int = 16, only: tuple[str, ...] = TASKS):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = {t: torch.randn(n, generator=g, dtype=torch.float64) for t in TASKS}
    y["aux1"] = y["main"] + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, {t: y[t] for t in only}


def _run(weighting, steps: int, meta_only: tuple[str, ...] = TASKS, lr: float = 0.1):
    torch.manual_seed(0)
    model = Net().double()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), opt, weighting=weighting)
    infos = [mtl.step(_batch(s), meta_batch=_batch(1000 + s, only=meta_only)) for s in range(steps)]
    return model, infos


@pytest.mark.parametrize(
    "make",
    [
        lambda: dm.AutoLambda(primary="main", lr=1e-2),
        lambda: dm.AutoLambda(primary="main", lr=1e-2, hypergradient="exact"),
        lambda: dm.AutoLambda(primary="main", lr=1e-2, order="lagged"),
        lambda: dm.HydaLearn(main="main", gain_batch="meta"),
        lambda: dm.HydaLearn(main="main", gain_batch="meta", gain="first_order"),
    ],
)
def test_meta_batches_need_the_primary_targets_only(make):
    full_model, full = _run(make(), 4)
    only_model, only = _run(make(), 4, meta_only=("main",))
    for a, b in zip(full, only):
        assert torch.equal(a.weights, b.weights)
    for p, q in zip(full_model.parameters(), only_model.parameters()):
        assert torch.equal(p, q)


def test_a_meta_batch_without_the_primary_targets_names_them():
    with pytest.raises(KeyError, match=r"missing task\(s\) \['main'\]"):
        _run(dm.AutoLambda(primary="main"), 1, meta_only=("aux1", "aux2"))


def test_normalize_mean_projects_each_update_onto_the_fixed_mean():
    """λ ← λ − η(h − mean h) under a plain SGD λ optimizer: only the relative weights move."""
    def sgd(ps):
        return torch.optim.SGD(ps, lr=0.5)

    weighting = dm.AutoLambda(primary="main", init=0.2, meta_optimizer=sgd, normalize="mean")
    free = dm.AutoLambda(primary="main", init=0.2, meta_optimizer=sgd)
    _run(free, 1)
    _, infos = _run(weighting, 6)
    assert torch.allclose(weighting.lambdas.detach().mean(), torch.tensor(0.2, dtype=torch.float64), atol=1e-12)
    h = free.last_hypergradient
    expected = 0.2 - 0.5 * (h - h.mean())
    _run(step_one := dm.AutoLambda(primary="main", init=0.2, meta_optimizer=sgd, normalize="mean"), 1)
    assert torch.allclose(step_one.lambdas.detach().to(expected), expected, atol=1e-12)
    assert float(free.lambdas.detach().mean()) != pytest.approx(0.2)  # without it the mean moves
    assert not torch.allclose(infos[-1].weights, infos[0].weights)  # the relative weights do change


def test_normalize_mean_with_nonnegative_keeps_both_constraints():
    """Large λ steps that the mean projection alone would push below 0: λ stays ≥ 0 *and* at mean init."""
    def sgd(ps):
        return torch.optim.SGD(ps, lr=50.0)

    weighting = dm.AutoLambda(primary="main", init=0.1, meta_optimizer=sgd, normalize="mean", nonnegative=True)
    mean_only = dm.AutoLambda(primary="main", init=0.1, meta_optimizer=sgd, normalize="mean")
    for steps in range(1, 4):
        _run(weighting, steps)
        _run(mean_only, steps)
        lam = weighting.lambdas.detach()
        assert float(lam.min()) >= 0.0
        assert float(lam.mean()) == pytest.approx(0.1, abs=1e-12)
    assert float(mean_only.lambdas.detach().min()) < 0  # the case the simplex projection is for


@pytest.mark.parametrize("seed", range(6))
def test_the_simplex_projection_is_the_nearest_point_of_the_simplex(seed):
    """w = argmin ‖w − v‖ over {w ≥ 0, Σw = s}: w is in the set and ⟨v − w, z − w⟩ ≤ 0 for
    every vertex z = s·eᵢ (the optimality condition of a projection onto a convex polytope)."""
    from dynamtl.weighting.auto_lambda import _simplex_projection

    g = torch.Generator().manual_seed(seed)
    n = 2 + seed
    v = 3 * torch.randn(n, generator=g, dtype=torch.float64)
    total = 0.1 * n
    w = _simplex_projection(v, total)
    assert float(w.min()) >= 0 and float(w.sum()) == pytest.approx(total, abs=1e-12)
    for i in range(n):
        z = torch.zeros(n, dtype=torch.float64)
        z[i] = total
        assert float((v - w) @ (z - w)) <= 1e-12
    inside = torch.full((n,), 0.1, dtype=torch.float64) + 0.01 * torch.arange(n) - 0.005 * (n - 1)
    assert torch.allclose(_simplex_projection(inside, total), inside, atol=1e-12)  # a point of the set stays


def test_normalize_mean_with_nonnegative_needs_a_positive_init():
    with pytest.raises(ValueError, match="init must be > 0"):
        dm.AutoLambda(init=0.0, normalize="mean", nonnegative=True)


def test_a_named_sgd_lambda_optimizer_steps_by_lr_times_the_hypergradient():
    """meta_optimizer="sgd": λ ← λ − lr·h, the same run as an explicit SGD factory, not Adam's."""
    named = dm.AutoLambda(primary="main", init=0.2, lr=3.0, meta_optimizer="sgd")
    factory = dm.AutoLambda(primary="main", init=0.2, meta_optimizer=lambda ps: torch.optim.SGD(ps, lr=3.0))
    adam = dm.AutoLambda(primary="main", init=0.2, lr=3.0)
    _run(named, 1)
    h = named.last_hypergradient
    assert float(h.abs().max()) > 0
    assert torch.allclose(named.lambdas.detach().to(h), 0.2 - 3.0 * h, atol=1e-12)
    _run(named_3 := dm.AutoLambda(primary="main", init=0.2, lr=3.0, meta_optimizer="sgd"), 3)
    _run(factory, 3)
    _run(adam, 3)
    assert torch.equal(named_3.lambdas, factory.lambdas)
    assert not torch.allclose(named_3.lambdas, adam.lambdas)
    assert isinstance(named.meta_optimizer, torch.optim.SGD) and isinstance(adam.meta_optimizer, torch.optim.Adam)


def test_the_lambda_optimizer_is_set_by_name_from_a_config():
    from dynamtl.registry import MethodContext, RegistryError, parse_method

    context = MethodContext(tasks=TASKS, primary=("main",), auxiliary=True, seed=0)
    weighting, _ = parse_method("auto-lambda", {"meta_optimizer": "sgd", "lr": "2.5"}).build(context)
    weighting.bind(TASKS)
    assert isinstance(weighting.meta_optimizer, torch.optim.SGD)
    assert weighting.meta_optimizer.param_groups[0]["lr"] == 2.5
    with pytest.raises(RegistryError, match=r"meta_optimizer.*\['adam', 'sgd'\].*'rmsprop'"):
        parse_method("auto-lambda", {"meta_optimizer": "rmsprop"})
    expected = r"AutoLambda's option meta_optimizer must be one of \['adam', 'sgd'\] or a callable, got 'rmsprop'"
    with pytest.raises(ValueError, match=expected):
        dm.AutoLambda(meta_optimizer="rmsprop")


def test_bad_normalize_and_smoothing_are_refused():
    with pytest.raises(ValueError, match="normalize"):
        dm.AutoLambda(normalize="sum")
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="smoothing"):
            dm.HydaLearn(main="main", smoothing=bad)


def test_a_non_finite_loss_after_lambda_grew_names_lambda():
    weighting = dm.AutoLambda(primary="main", init=1.0, lr=1e-2)
    model, _ = _run(weighting, 2)
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)),
                       torch.optim.SGD(model.parameters(), lr=0.1), weighting=weighting)
    x, y = _batch(7)
    with pytest.raises(NonFiniteLossError) as error:
        mtl.step((x * float("inf"), y), meta_batch=_batch(8))
    assert "λ" not in str(error.value)  # λ near its start: not blamed
    with torch.no_grad():
        weighting.lambdas.copy_(torch.tensor([4.6, 0.5, 3.0]))
    with pytest.raises(NonFiniteLossError, match=r"Auto-Lambda's λ grew without bound to \(main=4\.6, aux1=0\.5, "
                       r"aux2=3\) from 1\.0.*normalize=mean.*lower the learning rate"):
        mtl.step((x * float("inf"), y), meta_batch=_batch(8))


def test_smoothing_is_the_moving_average_of_the_per_batch_weights():
    beta = 0.7
    smoothed = dm.HydaLearn(main="main", smoothing=beta)
    _, infos = _run(smoothed, 6)
    # replay the same run and recompute each step's per-batch weights from its gains
    replayed = dm.HydaLearn(main="main", smoothing=beta)
    unsmoothed = dm.HydaLearn(main="main").bind(TASKS)
    torch.manual_seed(0)
    model = Net().double()
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)),
                       torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), weighting=replayed)
    ema = None
    for s, info in enumerate(infos):
        got = mtl.step(_batch(s), meta_batch=_batch(1000 + s))
        raw = unsmoothed._weights_from_gains(replayed.last_gains)
        ema = raw if ema is None else beta * ema + (1 - beta) * raw
        assert torch.allclose(got.weights, ema, atol=1e-12) and torch.allclose(info.weights, ema, atol=1e-12)
    assert not torch.allclose(raw, ema)  # the smoothing did something


def _ascend(negative: float, steps: int):
    """A run whose λ of aux2 is held at ``negative`` (λ's own learning rate is tiny)."""
    from dynamtl.weighting.auto_lambda import NegativeLambdaWarning

    weighting = dm.AutoLambda(primary="main", init=1.0, lr=1e-12)
    torch.manual_seed(0)
    model = Net().double()
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)),
                       torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), weighting=weighting)
    mtl.step(_batch(0), meta_batch=_batch(1000))
    with torch.no_grad():
        weighting.lambdas.copy_(torch.tensor([1.0, 1.0, negative]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infos = [mtl.step(_batch(s), meta_batch=_batch(1000 + s)) for s in range(1, steps)]
    return [w for w in caught if issubclass(w.category, NegativeLambdaWarning)], infos


def test_a_negative_lambda_whose_loss_explodes_is_named_once_while_the_loss_is_finite():
    named, infos = _ascend(-3.0, 30)
    losses = [float(info.losses[2]) for info in infos]
    assert all(math.isfinite(v) for v in losses) and max(losses) > 100 * losses[0]  # finite, but exploding
    assert len(named) == 1
    assert re.search(r"task 'aux2' has λ = -3 < 0 since step 2 \(1-based\), and its training loss grew from "
                     r"\S+ to \S+ by step \d+: a negative λ ascends .*nonnegative=True", str(named[0].message))
    step = int(re.search(r"by step (\d+)", str(named[0].message)).group(1))
    assert losses[step - 2] > 100 * losses[0] and max(losses[: step - 2]) <= 100 * losses[0]  # at the first such step


def test_a_small_negative_lambda_whose_loss_does_not_explode_is_not_named():
    named, infos = _ascend(-1e-3, 30)
    assert named == []
    assert min(float(info.weights[2]) for info in infos) < 0


def test_a_non_finite_loss_with_a_negative_lambda_names_it():
    weighting = dm.AutoLambda(primary="main", init=0.1, lr=1e-2)
    model, _ = _run(weighting, 2)
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)),
                       torch.optim.SGD(model.parameters(), lr=0.1), weighting=weighting)
    with torch.no_grad():
        weighting.lambdas.copy_(torch.tensor([0.3, -0.4, 0.1]))  # |λ| small: only its sign can explain
    x, y = _batch(7)
    with pytest.raises(NonFiniteLossError, match=r"Auto-Lambda's λ is negative for \['aux1'\] \(λ: main=0\.3, "
                       r"aux1=-0\.4, aux2=0\.1; from 0\.1\): a negative λ ascends .*nonnegative=True"):
        mtl.step((x * float("inf"), y), meta_batch=_batch(8))
