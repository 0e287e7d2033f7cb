"""MoCo, SDMGrad and MoDo: the stochastic MGDA variants that track gradients over steps or
read several independent mini-batches per step. Each is checked against its update rule by
hand (float64), on degenerate inputs (zero rows, one task, identical gradients, absent
tasks), and inside MultiTask (extra batches, BatchNorm statistics, errors, state)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm
from dynamtl.aggregation._solvers import cross_gramian, project_simplex
from tests.states import assert_same_state

F64 = torch.float64
TASKS = ("a", "b", "c")


def rows(seed: int, tasks: int = 3, dim: int = 5) -> torch.Tensor:
    return torch.randn(tasks, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def simplex_projection_by_kkt(v: torch.Tensor) -> torch.Tensor:
    """The projection onto the simplex from its optimality conditions: w = max(v − τ, 0)
    with Σw = 1, τ found by bisection (independent of the sorting rule)."""
    low, high = float(v.min()) - 1.0, float(v.max())
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if float((v - mid).clamp_min(0).sum()) > 1.0 else (low, mid)
    return (v - 0.5 * (low + high)).clamp_min(0)


@pytest.mark.parametrize("seed", range(6))
def test_the_simplex_projection_satisfies_its_optimality_conditions(seed):
    v = torch.randn(4 + seed, generator=torch.Generator().manual_seed(seed), dtype=F64) * (1 + seed)
    w = project_simplex(v)
    assert float(w.min()) >= 0 and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(w, simplex_projection_by_kkt(v), rtol=0, atol=1e-10)
    inside = torch.full((5,), 0.2, dtype=F64)
    torch.testing.assert_close(project_simplex(inside), inside)


def test_the_simplex_projection_of_huge_or_infinite_steps_is_their_limit():
    """Shifting by a constant does not move the projection: v of size 1e59 (a raw step on
    gradients of size 1e30) lost the 1 of Σw = 1 in rounding and gave inf/NaN weights."""
    v = torch.tensor([-1e59, -3e59, -1e59 + 1e44], dtype=F64)
    torch.testing.assert_close(project_simplex(v), torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    torch.testing.assert_close(project_simplex(torch.tensor([-1e300, -1e300], dtype=F64)),
                               torch.tensor([0.5, 0.5], dtype=F64))
    inf = torch.inf
    torch.testing.assert_close(project_simplex(torch.tensor([inf, 0.0, inf], dtype=F64)),
                               torch.tensor([0.5, 0.0, 0.5], dtype=F64))
    torch.testing.assert_close(project_simplex(torch.tensor([-inf, 0.3, 0.1], dtype=F64)),
                               torch.tensor([0.0, 0.6, 0.4], dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        project_simplex(torch.tensor([torch.nan, 0.0], dtype=F64))


@pytest.mark.parametrize("make", [lambda: dm.MoDo(normalize=False, double_sampling=False),
                                  lambda: dm.SDMGrad(normalize=False, double_sampling=False),
                                  lambda: dm.MoCo(normalize=False)])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_raw_steps_on_huge_gradients_keep_the_weights_on_the_simplex(make, dtype):
    rows = (1e30 * torch.tensor([[1.0, 2.0, 0.5], [1.0, 2.0, 0.5], [-0.9, 0.5, 0.0]], dtype=F64)).to(dtype)
    aggregation = make()
    for _ in range(3):
        weights, update = aggregation.weights_and_update(rows)
        assert torch.isfinite(weights).all() and torch.isfinite(update).all()
        assert float(weights.min()) >= 0 and float(weights.sum()) == pytest.approx(1.0)


def test_the_cross_gramian_of_independent_batches_averages_to_the_gramian_of_the_mean():
    """The unbiasedness double sampling rests on: over independent draws (all ordered pairs
    of a population of batches, with replacement), E[G₁G₂ᵀ] = ḠḠᵀ, which E[GGᵀ] is not."""
    population = [rows(s) for s in range(4)]
    mean = torch.stack(population).mean(0)
    crossed = torch.stack([cross_gramian(a, b) for a, b in itertools.product(population, repeat=2)]).mean(0)
    torch.testing.assert_close(crossed, mean @ mean.T)
    same = torch.stack([cross_gramian(a, a) for a in population]).mean(0)
    assert not torch.allclose(same, mean @ mean.T, atol=1e-3)
    torch.testing.assert_close(cross_gramian(population[0], population[1]), population[0] @ population[1].T)


# ---------------------------------------------------------------- MoCo


def test_moco_tracks_the_gradients_and_steps_its_weights_as_the_paper_writes():
    beta, gamma, rho, sb, sg = 0.3, 0.2, 0.1, 0.5, 0.25
    moco = dm.MoCo(beta=beta, gamma=gamma, rho=rho, beta_decay=sb, gamma_decay=sg, normalize=False)
    y, lam = None, torch.full((3,), 1 / 3, dtype=F64)
    for t in range(1, 5):
        g = rows(t)
        alpha, update = moco.weights_and_update(g)
        y = g.clone() if y is None else y - beta / t**sb * (y - g)
        lam = simplex_projection_by_kkt(lam - gamma / t**sg * (y @ y.T + rho * torch.eye(3, dtype=F64)) @ lam)
        torch.testing.assert_close(alpha, lam, rtol=0, atol=1e-10)
        torch.testing.assert_close(update, lam @ y, rtol=0, atol=1e-10)
        torch.testing.assert_close(moco.tracked, y)


def test_moco_normalizes_by_the_trace_so_the_scale_of_the_gradients_does_not_matter():
    small, large = dm.MoCo(), dm.MoCo()
    for t in range(3):
        a, b = small.weights_and_update(rows(t)), large.weights_and_update(1e4 * rows(t))
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(1e4 * a[1], b[1])
    raw_small, raw_large = dm.MoCo(normalize=False), dm.MoCo(normalize=False)  # the paper's raw step
    tiny = raw_small.weights_and_update(1e-3 * rows(0))[0]
    assert not torch.allclose(tiny, raw_large.weights_and_update(rows(0))[0], atol=0.1)


def test_moco_with_beta_one_tracks_nothing_and_its_ball_bounds_the_estimates():
    moco = dm.MoCo(beta=1.0, radius=0.5)
    for t in range(3):
        g = rows(t)
        alpha, update = moco.weights_and_update(g)
        expected = g * (0.5 / g.norm(dim=1).clamp_min(0.5))[:, None]
        torch.testing.assert_close(moco.tracked, expected)
        torch.testing.assert_close(update, alpha @ expected)


def test_moco_on_degenerate_rows():
    one = dm.MoCo()
    g = rows(0, tasks=1)
    alpha, update = one.weights_and_update(g)
    assert alpha.tolist() == [1.0]
    torch.testing.assert_close(update, g[0])
    zero = dm.MoCo()
    alpha, update = zero.weights_and_update(torch.zeros(3, 4, dtype=F64))
    assert alpha.tolist() == [0.0, 0.0, 0.0] and not update.any()
    same = dm.MoCo()
    for _ in range(3):  # identical gradients: any weights on the simplex give that gradient
        alpha, update = same.weights_and_update(torch.ones(3, 4, dtype=F64))
        torch.testing.assert_close(update, torch.ones(4, dtype=F64))
        assert float(alpha.sum()) == pytest.approx(1.0)


def test_moco_keeps_an_absent_task_s_estimate_and_weight_and_leaves_it_out_of_the_step():
    moco = dm.MoCo(beta=0.5, gamma=0.1, rho=0.0, normalize=False)
    moco.weights_and_update(rows(0))
    tracked, weights = moco.tracked.clone(), moco.weights.clone()
    g = rows(1)
    g[1] = 0.0
    alpha, update = moco.weights_and_update(g)
    torch.testing.assert_close(moco.tracked[1], tracked[1])
    assert float(alpha[1]) == 0.0 and float(alpha.sum()) == pytest.approx(1.0)
    assert float(moco.weights[1]) == float(weights[1]) and float(moco.weights.sum()) == pytest.approx(1.0)
    present = [0, 2]
    y = tracked[present] - 0.5 * (tracked[present] - g[present])
    mu = weights[present] / weights[present].sum()
    expected = simplex_projection_by_kkt(mu - 0.1 * (y @ y.T) @ mu)
    torch.testing.assert_close(alpha[present], expected)
    torch.testing.assert_close(update, expected @ y)
    fresh = dm.MoCo()
    first = rows(2)
    first[2] = 0.0
    fresh.weights_and_update(first)
    second = rows(3)
    fresh.weights_and_update(second)  # a task seen for the first time starts from its gradient
    torch.testing.assert_close(fresh.tracked[2], second[2])


def test_moco_restarts_when_the_tasks_change_and_its_state_round_trips():
    moco = dm.MoCo()
    for t in range(3):
        moco.weights_and_update(rows(t))
    twin = dm.MoCo()
    twin.load_state_dict(copy.deepcopy(moco.state_dict()))
    a, b = moco.weights_and_update(rows(9)), twin.weights_and_update(rows(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and moco.steps == twin.steps == 4
    moco.weights_and_update(rows(0, tasks=2))
    assert moco.steps == 1 and moco.tracked.shape == (2, 5)


# ------------------------------------------------------- SDMGrad and MoDo


def by_hand_cross(first, second):
    """G₁G₂ᵀ over s², s the mean of √max(g₁ᵢ·g₂ᵢ, 0) (the official SDMGrad normalisation)."""
    cross = first @ second.T
    return cross / (first * second).sum(1).clamp_min(0).sqrt().mean() ** 2


def by_hand_modo(state, first, second, gamma, rho):
    cross = by_hand_cross(first, second)
    return simplex_projection_by_kkt(state - gamma * (cross @ state + rho * state))


def by_hand_sdmgrad(state, first, second, reg, lr, momentum, iterations):
    cross = by_hand_cross(first, second)
    w, velocity = state, torch.zeros_like(state)
    for _ in range(iterations):
        velocity = momentum * velocity + cross @ (w + reg / len(w))
        w = simplex_projection_by_kkt(w - lr * velocity)
    return w, (w + reg / len(w)) / (1 + reg)


def test_modo_takes_one_projected_step_on_the_cross_gramian_of_the_two_extra_batches():
    modo = dm.MoDo(gamma=0.3, rho=0.2)
    lam = torch.full((3,), 1 / 3, dtype=F64)
    for t in range(3):
        main, first, second = rows(3 * t), rows(3 * t + 1), rows(3 * t + 2)
        alpha = modo.sampled_row_weights(main, [first, second])
        lam = by_hand_modo(lam, first, second, 0.3, 0.2)
        torch.testing.assert_close(alpha, lam, rtol=0, atol=1e-10)
    assert not torch.allclose(lam, torch.full((3,), 1 / 3, dtype=F64))


def test_sdmgrad_takes_its_inner_steps_from_the_previous_weights():
    sdm = dm.SDMGrad(reg=0.4, lr=0.3, momentum=0.6, iterations=4)
    w = torch.full((3,), 1 / 3, dtype=F64)
    for t in range(3):
        main, first, second = rows(3 * t), rows(3 * t + 1), rows(3 * t + 2)
        alpha = sdm.sampled_row_weights(main, [first, second])
        w, expected = by_hand_sdmgrad(w, first, second, 0.4, 0.3, 0.6, 4)
        torch.testing.assert_close(alpha, expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(sdm.weights, w, rtol=0, atol=1e-10)
    assert float(alpha.sum()) == pytest.approx(1.0)


def test_sdmgrad_spans_mgda_and_the_mean():
    g = rows(0)
    mgda = dm.MGDA().double().row_weights(g)
    sdm = dm.SDMGrad(reg=0.0, lr=0.5, iterations=3000)
    torch.testing.assert_close(sdm.sampled_row_weights(g, [g, g]), mgda, rtol=0, atol=1e-6)
    mean = dm.SDMGrad(reg=1e8).sampled_row_weights(g, [g, g])
    torch.testing.assert_close(mean, torch.full((3,), 1 / 3, dtype=F64), rtol=0, atol=1e-7)


@pytest.mark.parametrize("make", [lambda: dm.MoDo(gamma=0.02, normalize=False),
                                  lambda: dm.SDMGrad(iterations=1, lr=0.02, normalize=False)], ids=["modo", "sdmgrad"])
def test_double_sampling_makes_the_expected_weight_step_that_of_the_mean_gradient(make):
    """Averaged over every pair of independent batches, one step of the weights (where the
    projection only shifts them) equals the step taken with the population's mean gradient."""
    population = [0.1 * rows(s) + torch.tensor([[1.0] * 5, [0.5] * 5, [-0.2] * 5], dtype=F64) for s in range(3)]
    mean = torch.stack(population).mean(0)
    steps = torch.stack([make().sampled_row_weights(mean, [a, b]) for a, b in itertools.product(population, repeat=2)])
    expected = make().sampled_row_weights(mean, [mean, mean])
    assert float(steps.min()) > 0  # the projection was a shift in every draw: the step is linear in G₁G₂ᵀ
    torch.testing.assert_close(steps.mean(0), expected, rtol=0, atol=1e-12)
    same = torch.stack([make().sampled_row_weights(mean, [a, a]) for a in population]).mean(0)
    assert not torch.allclose(same, expected, atol=1e-4)  # one batch twice is biased


@pytest.mark.parametrize("make", [dm.MoDo, dm.SDMGrad], ids=["modo", "sdmgrad"])
def test_sampled_weights_on_degenerate_rows(make):
    g = rows(0, tasks=1)
    assert make().sampled_row_weights(g, [g, g]).tolist() == [1.0]
    zero = torch.zeros(3, 4, dtype=F64)
    assert make().sampled_row_weights(zero, [zero, zero]).tolist() == [0.0, 0.0, 0.0]
    ones = torch.ones(3, 4, dtype=F64)
    for_identical = make().sampled_row_weights(ones, [ones, ones])
    torch.testing.assert_close(for_identical, torch.full((3,), 1 / 3, dtype=F64))
    method = make()
    method.sampled_row_weights(rows(1), [rows(2), rows(3)])
    before = method.weights.clone()
    main = rows(4)
    main[0] = 0.0  # task 0 absent from this batch: left out, its weight kept
    alpha = method.sampled_row_weights(main, [rows(5), rows(6)])
    assert float(alpha[0]) == 0.0 and float(alpha.sum()) == pytest.approx(1.0)
    assert float(method.weights[0]) == float(before[0]) and float(method.weights.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("make", [dm.MoDo, dm.SDMGrad], ids=["modo", "sdmgrad"])
def test_sampled_weights_need_the_extra_batches(make):
    g = rows(0)
    with pytest.raises(ValueError, match="three mini-batches per step"):
        make().row_weights(g)
    with pytest.raises(ValueError, match=r"needs the task gradients of 2 extra mini-batches"):
        make().sampled_row_weights(g, [g])
    with pytest.raises(ValueError, match=r"each of shape \[3, 5\]"):
        make().sampled_row_weights(g, [g, rows(1, dim=4)])


@pytest.mark.parametrize(("make", "bad"), [
    (lambda: dm.MoCo(beta=0), r"MoCo's option beta must be in \(0, 1\], got 0"), (lambda: dm.MoCo(radius=0), "radius"),
    (lambda: dm.MoCo(rho=-1), "rho"), (lambda: dm.MoCo(gamma_decay=-1), "gamma_decay"),
    (lambda: dm.MoDo(gamma=0), "MoDo's option gamma must be > 0 and finite, got 0"),
    (lambda: dm.SDMGrad(reg=-1), "reg"), (lambda: dm.SDMGrad(iterations=0), "iterations"),
    (lambda: dm.SDMGrad(lr=0), "SDMGrad's option lr must be > 0 and finite, got 0"),
])
def test_bad_options_are_named(make, bad):
    with pytest.raises(ValueError, match=bad):
        make()


@pytest.mark.parametrize("make", [dm.MoCo, dm.MoDo, dm.SDMGrad], ids=["moco", "modo", "sdmgrad"])
def test_methods_that_combine_batches_or_steps_refuse_the_representation_and_cr_mogm(make):
    with pytest.raises(ValueError, match="belong to one batch's samples"):
        dm.OnRepresentation(make())
    with pytest.raises(ValueError, match="use it alone"):
        dm.CRMOGM(make())


# ---------------------------------------------------------------- in MultiTask


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})

    def forward(self, x):
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 4, generator=g, dtype=F64), {t: torch.randn(8, generator=g, dtype=F64) for t in TASKS}


def multitask(aggregation):
    torch.manual_seed(0)
    model = Net().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), opt, aggregation=aggregation)


def shared_rows_of(model, b):
    out = model(b[0])
    trunk = [p for n, p in model.named_parameters() if n.startswith("trunk")]
    return torch.stack([
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.mse_loss(out[t], b[1][t]), trunk, retain_graph=True)])
        for t in TASKS
    ])


@pytest.mark.parametrize("make", [dm.MoDo, dm.SDMGrad], ids=["modo", "sdmgrad"])
def test_in_a_step_the_weights_come_from_the_extra_batches_and_the_update_from_the_batch(make):
    model, mtl = multitask(make())
    twin = copy.deepcopy(model)
    main, extras = batch(0), [batch(1), batch(2)]
    info = mtl.backward(main, extra_batches=extras)
    buffers_of_a_one_batch_step = copy.deepcopy(twin)
    buffers_of_a_one_batch_step(main[0])
    for name, b in model.named_buffers():  # BatchNorm saw the step's batch only
        assert torch.equal(b, dict(buffers_of_a_one_batch_step.named_buffers())[name]), name
    eval_twin = copy.deepcopy(twin)  # the extra batches are normalised with their own statistics
    expected = make().sampled_row_weights(shared_rows_of(twin, main), [shared_rows_of(eval_twin, e) for e in extras])
    torch.testing.assert_close(info.aggregation_weights, expected, rtol=1e-10, atol=1e-12)
    update = torch.cat([p.grad.reshape(-1) for n, p in model.named_parameters() if n.startswith("trunk")])
    torch.testing.assert_close(update, expected @ shared_rows_of(twin, main), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [dm.MoDo, dm.SDMGrad], ids=["modo", "sdmgrad"])
def test_a_wrong_number_of_extra_batches_is_refused_with_the_fix(make):
    _, mtl = multitask(make())
    fix = r"reads 3 independent mini-batches per step.*extra_batches=\[\.\.\.\]\) with 2"
    with pytest.raises(ValueError, match=fix):
        mtl.step(batch(0))
    with pytest.raises(TypeError, match="extra_batches must be a list"):
        mtl.step(batch(0), extra_batches=iter([batch(1), batch(2)]))
    _, plain = multitask(dm.MoCo())
    with pytest.raises(ValueError, match=r"reads one mini-batch per step.*drop extra_batches"):
        plain.step(batch(0), extra_batches=[batch(1)])


@pytest.mark.parametrize("make", [dm.MoDo, dm.SDMGrad], ids=["modo", "sdmgrad"])
def test_a_non_finite_extra_batch_is_named_and_the_step_changes_nothing(make):
    model, mtl = multitask(make())
    mtl.step(batch(0), extra_batches=[batch(1), batch(2)])
    before = {"model": copy.deepcopy(model.state_dict()), "mtl": copy.deepcopy(mtl.state_dict())}
    x, y = batch(3)
    poisoned = (x, {**y, "b": torch.full_like(y["b"], float("nan"))})
    with pytest.raises(dm.NonFiniteLossError, match="extra batch 2") as error:
        mtl.step(batch(4), extra_batches=[batch(5), poisoned])
    assert "'b'" in str(error.value)
    assert_same_state(model.state_dict(), before["model"], "model")
    assert_same_state(mtl.state_dict(), before["mtl"], "multitask")


@pytest.mark.parametrize("make", [dm.MoCo, dm.MoDo, dm.SDMGrad], ids=["moco", "modo", "sdmgrad"])
def test_a_task_without_a_graph_is_left_out_of_the_step(make):
    """Task c has no labelled sample in the step's batch (its loss is a constant)."""

    def masked(prediction, target):
        keep = ~target.isnan()
        return F.mse_loss(prediction[keep], target[keep]) if keep.any() else prediction.new_zeros(())

    torch.manual_seed(0)
    model = Net().double()
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, masked)), torch.optim.SGD(model.parameters(), lr=0.1),
                       aggregation=make())
    x, y = batch(0)
    unlabelled = (x, {**y, "c": torch.full_like(y["c"], float("nan"))})
    extras = [batch(1), batch(2)] if mtl.aggregation.batches_per_step > 1 else []
    info = mtl.step(unlabelled, extra_batches=extras)
    assert float(info.aggregation_weights[2]) == 0.0
    assert float(info.aggregation_weights.sum()) == pytest.approx(1.0)
    assert all(p.grad is None or not p.grad.any() for n, p in model.named_parameters() if n.startswith("heads.c"))


@pytest.mark.parametrize("make", [dm.MoDo, dm.SDMGrad], ids=["modo", "sdmgrad"])
def test_the_single_batch_variant_reads_one_batch_and_uses_its_gram_matrix(make):
    model, mtl = multitask(make(double_sampling=False))
    assert mtl.aggregation.batches_per_step == 1
    twin = copy.deepcopy(model)
    main = batch(0)
    info = mtl.step(main)
    rows_ = shared_rows_of(twin, main)
    torch.testing.assert_close(info.aggregation_weights, make().sampled_row_weights(rows_, [rows_, rows_]))
    with pytest.raises(ValueError, match="reads one mini-batch per step"):
        mtl.step(main, extra_batches=[batch(1), batch(2)])
