"""Every weighting and aggregation at the edges of real training, enumerated from the registry
so that a new method is covered as soon as it is registered: tasks whose loss has no graph
in a step, degenerate gradient geometry in float64/float32/bfloat16, non-finite values in
any pass (detected in the step, named, everything rolled back bit for bit), half-precision
models, errors from the user's model or loss, whose parameters, and constructor arguments
of the wrong kind."""

from __future__ import annotations

import copy
import inspect
import logging
import math
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm
from dynamtl import registry
from dynamtl.aggregation.base import GradientAggregation
from tests.states import assert_same_state

TASKS = ("a", "b", "c")
WEIGHTINGS = sorted(n for n, m in registry.WEIGHTINGS.items() if not m.single_task)
# one batch per step (SDMGrad and MoDo read three: tests/test_stochastic_mgda.py)
AGGREGATIONS = sorted(n for n, m in registry.AGGREGATIONS.items() if m.factory.facts.batches_per_step == 1)
GRADIENT_AGGREGATIONS = sorted(
    n for n in AGGREGATIONS if issubclass(registry.AGGREGATIONS[n].factory, GradientAggregation)
)


# values for the options a method cannot do without (the registry says which those are)
REQUIRED = {"weights": lambda tasks: {t: 0.5 + i for i, t in enumerate(tasks)}}


def build(kind: str, name: str, tasks=TASKS):
    """The registry's ``name`` for ``tasks`` (auxiliary mode, primary task ``a``, seed 0)."""
    method = (registry.WEIGHTINGS if kind == "weighting" else registry.AGGREGATIONS)[name]
    context = registry.MethodContext(tasks=tuple(tasks), primary=("a",), auxiliary=True, seed=0)
    needed = [n for n, d in method.option_defaults().items() if d is inspect.Parameter.empty]
    return method.build(context, {n: REQUIRED[n](tasks) for n in needed})


class Net(nn.Module):
    """Trunk Linear(4, 6) [→ BatchNorm1d] → tanh, one Linear(6, 1) head per task."""

    def __init__(self, names=TASKS, batchnorm=False):
        super().__init__()
        layers = [nn.Linear(4, 6)] + ([nn.BatchNorm1d(6)] if batchnorm else []) + [nn.Tanh()]
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({n: nn.Linear(6, 1) for n in names})

    def forward(self, x, task=None):
        h = self.trunk(x)
        if task is not None:
            return self.heads[task](h).squeeze(-1)
        return {n: head(h).squeeze(-1) for n, head in self.heads.items()}


def net(seed=0, dtype=torch.float64, **kwargs):
    torch.manual_seed(seed)
    return Net(**kwargs).to(dtype)


def masked_mse(prediction, target):
    """MSE over the labelled samples (NaN target = no label); a constant 0 without any."""
    labelled = ~torch.isnan(target)
    if not bool(labelled.any()):
        return torch.tensor(0.0)
    return F.mse_loss(prediction[labelled], target[labelled])


def batch(seed=0, n=16, dtype=torch.float64, names=TASKS, multi_input=False):
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    if multi_input:
        return {t: (draw(n, 4), draw(n)) for t in names}
    return draw(n, 4), {t: draw(n) for t in names}


def unlabelled(b, task, multi_input=False):
    """``b`` with every target of ``task`` missing (NaN)."""
    if multi_input:
        x, y = b[task]
        return {**b, task: (x, torch.full_like(y, float("nan")))}
    x, targets = b
    return x, {**targets, task: torch.full_like(targets[task], float("nan"))}


def without(b, task, multi_input=False):
    if multi_input:
        return {t: v for t, v in b.items() if t != task}
    return b[0], {t: y for t, y in b[1].items() if t != task}


def grads_after_backward(weighting, aggregation, names, b, meta, multi_input=False, seed=0):
    """``.grad`` of every parameter after one ``MultiTask.backward`` on a fresh ``net(seed)``."""
    model = net(seed)
    tasks = dm.Tasks(dict.fromkeys(names, masked_mse), multi_input=multi_input)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mtl = dm.MultiTask(model, tasks, opt, weighting=weighting, aggregation=aggregation)
    info = mtl.backward(b, meta)
    return {n: p.grad for n, p in model.named_parameters()}, info


def assert_same_gradients(got, expected, atol=1e-10):
    for name in got:
        g, e = got[name], expected[name]
        g = torch.zeros(1, dtype=torch.float64) if g is None else g
        e = torch.zeros(1, dtype=torch.float64) if e is None else e
        torch.testing.assert_close(g.expand_as(e) if g.numel() == 1 else g, e.expand_as(g) if e.numel() == 1 else e,
                                   atol=atol, rtol=1e-7, msg=f"gradient of {name}")


# --------------------------------------------------------------------- 1. a task without a graph

# Weightings whose weights of the present tasks depend on the other tasks' *loss values* or on
# T by design: the absent task's constant loss still counts (RLW draws T random weights).
WEIGHTS_DEPEND_ON_ALL_TASKS = {"rlw"}


@pytest.mark.parametrize("multi_input", [False, True], ids=["single-input", "multi-input"])
@pytest.mark.parametrize("name", AGGREGATIONS)
def test_aggregation_step_with_a_graphless_task_is_the_step_on_the_other_tasks(name, multi_input):
    b = batch(1, multi_input=multi_input)
    got, _ = grads_after_backward(None, build("aggregation", name), TASKS, unlabelled(b, "c", multi_input), None,
                                  multi_input)
    expected, _ = grads_after_backward(None, build("aggregation", name, ("a", "b")), ("a", "b"),
                                       without(b, "c", multi_input), None, multi_input)
    assert got["heads.c.weight"] is None or not got["heads.c.weight"].any()
    assert_same_gradients(got, expected, atol=1e-8 if name in ("cagrad", "nash-mtl") else 1e-10)


@pytest.mark.parametrize("multi_input", [False, True], ids=["single-input", "multi-input"])
@pytest.mark.parametrize("name", WEIGHTINGS)
def test_weighting_step_with_a_graphless_task_is_the_step_on_the_other_tasks(name, multi_input):
    b, meta = batch(1, multi_input=multi_input), batch(2, multi_input=multi_input)
    absent = unlabelled(b, "c", multi_input)
    got, info = grads_after_backward(build("weighting", name), None, TASKS, absent, meta, multi_input)
    assert torch.isfinite(info.weights).all()
    assert got["heads.c.weight"] is None or not got["heads.c.weight"].any()
    # the step is Σ over the present tasks of λₖ ∇Lₖ with the reported λ: the absent row is zero
    model = net(0)
    tasks = dm.Tasks(dict.fromkeys(("a", "b"), masked_mse), multi_input=multi_input)
    losses = dm.Objective(model, tasks).losses(without(b, "c", multi_input))
    (info.weights[:2] * losses).sum().backward()
    assert_same_gradients(got, {n: p.grad for n, p in model.named_parameters()})
    if name in WEIGHTS_DEPEND_ON_ALL_TASKS:
        return
    expected, info2 = grads_after_backward(build("weighting", name, ("a", "b")), None, ("a", "b"),
                                           without(b, "c", multi_input), without(meta, "c", multi_input),
                                           multi_input)
    torch.testing.assert_close(info.weights[:2], info2.weights)
    assert_same_gradients(got, expected)


def test_mgda_upper_bound_with_a_graphless_task_is_the_step_on_the_other_tasks():
    b = batch(1)
    grads = []
    for names, given in ((TASKS, unlabelled(b, "c")), (("a", "b"), without(b, "c"))):
        model = net(0)
        mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(names, masked_mse)), aggregation=dm.MGDA(upper_bound=True),
                           representation="trunk")
        mtl.backward(given)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert_same_gradients(*grads)


def run_steps(name, names, batches, metas):
    model = net(0)
    tasks = dm.Tasks(dict.fromkeys(names, masked_mse))
    mtl = dm.MultiTask(model, tasks, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                       weighting=build("weighting", name, names))
    weights = []
    for b, meta in zip(batches, metas):
        weights.append(mtl.step(b, meta).weights)
        mtl.end_epoch()  # DWA's history moves every step here
    return torch.stack(weights), model


@pytest.mark.parametrize("name", WEIGHTINGS)
def test_a_task_absent_for_many_steps_leaves_its_weight_and_the_others_steps_alone(name):
    """Over six steps without a label for c, c's weight does not drift (no state of c moves)
    and the others train exactly as a run without c, except where the weights are a
    function of all T tasks by design (RLW's random draw, DWA's T·softmax)."""
    batches, metas = [batch(10 + k) for k in range(6)], [batch(20 + k) for k in range(6)]
    weights, model = run_steps(name, TASKS, [unlabelled(b, "c") for b in batches], metas)
    assert torch.isfinite(weights).all()
    if name in WEIGHTS_DEPEND_ON_ALL_TASKS | {"dwa"}:
        return
    assert torch.equal(weights[:, 2], weights[:1, 2].expand(6)), weights[:, 2]
    alone, model_alone = run_steps(name, ("a", "b"), [without(b, "c") for b in batches],
                                   [without(m, "c") for m in metas])
    torch.testing.assert_close(weights[:, :2], alone)
    for (n, p), q in zip(model.named_parameters(), model_alone.parameters()):
        if not n.startswith("heads.c"):
            torch.testing.assert_close(p, q, msg=n)


def test_pcgrad_with_an_ignored_task_is_the_issue_example():
    """Two tasks on one linear layer, every target of b is the ignore value."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()

    def ce_head(k):
        def loss(out, y):
            keep = y != -100
            return F.cross_entropy(out[keep], y[keep]) if keep.any() else torch.tensor(0.0)
        return loss

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = model

        def forward(self, x):
            out = self.lin(x)
            return {"a": out, "b": out}

    two = Two()
    x = torch.randn(5, 3, dtype=torch.float64)
    b = (x, {"a": torch.tensor([0, 1, 0, 1, 1]), "b": torch.full((5,), -100)})
    opt = torch.optim.SGD(two.parameters(), lr=0.1)
    dm.MultiTask(two, dm.Tasks({"a": ce_head(0), "b": ce_head(1)}), opt, aggregation=dm.PCGrad()).backward(b)
    expected = torch.autograd.grad(F.cross_entropy(model(x), b[1]["a"]), list(model.parameters()))
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e)


# ------------------------------------------------------------- 2. degenerate gradient geometry


def degenerate_jacobians():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(3, 5, generator=g, dtype=torch.float64)
    return {
        "zero row": torch.stack([r[0], torch.zeros(5, dtype=torch.float64), r[1]]),
        "underflowing row": torch.stack([r[0], 1e-25 * r[1], r[2]]),
        "duplicate rows": torch.stack([r[0], r[0], r[1]]),
        "opposite rows": torch.stack([r[0], -r[0]]),
        "one task": r[:1],
        "rank deficient": torch.stack([r[0], r[1], r[0] + 2 * r[1]]),
        "issue example": torch.tensor([[1.0, 0.5, 0.0], [-3e-25, 1e-25, 0.0]], dtype=torch.float64),
    }


DEGENERATE = degenerate_jacobians()
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("case", list(DEGENERATE))
@pytest.mark.parametrize("name", GRADIENT_AGGREGATIONS)
def test_degenerate_jacobians_give_the_float64_result(name, case, dtype):
    j = DEGENERATE[case].to(dtype)
    reference = build("aggregation", name).combine(DEGENERATE[case])
    d = build("aggregation", name).combine(j)
    assert d.dtype == dtype and torch.isfinite(d).all()
    assert torch.isfinite(reference).all()
    scale = float(j.double().norm(dim=1).sum())
    assert float((d.double() - reference).norm()) <= TOLERANCE[dtype] * max(scale, 1e-30), (d, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_pcgrad_issue_example(dtype):
    j = torch.tensor([[1.0, 0.5, 0.0], [-3e-25, 1e-25, 0.0]], dtype=dtype)
    torch.testing.assert_close(dm.PCGrad().combine(j).double(), torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64),
                               atol=TOLERANCE[dtype], rtol=0)


# ----------------------------------------------------------------------------- 3. CAGrad c ≥ 1


def independent_cagrad(j: np.ndarray, c: float) -> float:
    """The best worst rate max_d minᵢ gᵢ·d s.t. ‖d − g₀‖ ≤ c‖g₀‖, solved as posed in d-space
    over (d, t) with SciPy's trust-region constrained solver (not the dual CAGrad uses)."""
    from scipy import optimize

    g0 = j.mean(0)
    r2 = (c * np.linalg.norm(g0)) ** 2
    dim = j.shape[1]
    constraints = optimize.NonlinearConstraint(
        lambda z: np.concatenate([j @ z[:dim] - z[-1], [r2 - float(((z[:dim] - g0) ** 2).sum())]]), 0.0, np.inf
    )
    start = np.concatenate([g0, [float((j @ g0).min())]])
    with warnings.catch_warnings():  # its quasi-Newton update warns on the linear objective
        warnings.simplefilter("ignore", UserWarning)
        result = optimize.minimize(lambda z: -z[-1], start, method="trust-constr", constraints=[constraints],
                                   options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 5000})
    assert result.status in (1, 2), result.message
    return -float(result.fun)


CAGRAD_CASES = {
    "issue example": [[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [-0.1, 1.0, 0]],
    "0 in the hull": [[1.0, 0.2], [-1.0, 0.3], [0.0, -1.0]],
    "conflicting pair": [[1.0, 0.5, -0.2], [-2.0, 1.0, 0.3]],
    "random": torch.randn(4, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64).tolist(),
}


@pytest.mark.parametrize("c", [0.1, 0.4, 0.9, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("case", list(CAGRAD_CASES))
def test_cagrad_reaches_the_best_worst_rate_of_an_independent_solve(case, c):
    j = torch.tensor(CAGRAD_CASES[case], dtype=torch.float64)
    d = dm.CAGrad(c=c, rescale=False).combine(j)
    best = independent_cagrad(j.numpy(), c)
    g0 = j.mean(0)
    assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-6) + 1e-9  # inside the ball
    tol = 3e-5 * float(j.norm(dim=1).max() * g0.norm())
    worst = float((j @ d).min())
    assert worst >= best - tol
    # no d does better than 0 when 0 is in the hull (Σ wᵢ gᵢ·d = 0): there the independent
    # solver stops short of 0 by more than its tolerance
    assert worst <= (0.0 if zero_in_hull(j.numpy()) else best + tol)


def zero_in_hull(j: np.ndarray) -> bool:
    """Whether some w ≥ 0 with Σw = 1 has Jᵀw = 0 (a linear programme)."""
    from scipy import optimize

    rows = j.shape[0]
    equalities = np.vstack([j.T, np.ones((1, rows))])
    result = optimize.linprog(np.zeros(rows), A_eq=equalities, b_eq=np.r_[np.zeros(j.shape[1]), 1.0], bounds=(0, None))
    return result.status == 0


@pytest.mark.parametrize("c", [0.1, 2.0])
def test_cagrad_issue_example_improves_no_task_worse_than_zero(c):
    j = torch.tensor(CAGRAD_CASES["issue example"], dtype=torch.float64)
    d = dm.CAGrad(c=c, rescale=False).combine(j)
    torch.testing.assert_close(d, torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64), atol=1e-7, rtol=0)


# -------------------------------------------------------------------- 4. GradNorm stays positive


class Trunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(8, 16)
        self.heads = nn.ModuleDict({"a": nn.Linear(16, 1), "b": nn.Linear(16, 1)})

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return {n: head(h).squeeze(-1) for n, head in self.heads.items()}


@pytest.mark.parametrize("lr", [0.025, 1e-3])
def test_gradnorm_weights_stay_positive_and_sum_to_t(lr):
    torch.manual_seed(0)
    model = Trunk()
    tasks = dm.Tasks({"a": F.mse_loss, "b": lambda p, y: 1e4 * F.mse_loss(p, y)})
    weighting = dm.GradNorm(lr=lr)
    mtl = dm.MultiTask(model, tasks, torch.optim.SGD(model.parameters(), lr=1e-6), weighting=weighting)
    smallest = math.inf
    for _ in range(300 if lr > 0.01 else 1200):
        x = torch.randn(16, 8)
        mtl.step((x, {"a": torch.randn(16), "b": torch.randn(16)}))
        w = weighting.task_weights.detach()
        smallest = min(smallest, float(w.min()))
        assert float(w.sum()) == pytest.approx(2.0, rel=1e-5)
    assert smallest > 0.0


# -------------------------------------------------------------------- 5. Frank-Wolfe on a vertex


@pytest.mark.parametrize(
    ("rows", "expected"),
    [([[0.1, 0.0], [1.0, 1.0]], [0.1, 0.0]), ([[0.3, 0.4]], [0.3, 0.4]), ([[0.3, 0.4], [0.3, 0.4]], [0.3, 0.4])],
    ids=["vertex", "one task", "identical rows"],
)
def test_frank_wolfe_on_a_vertex_converges_without_warning(rows, expected, caplog):
    with caplog.at_level(logging.WARNING, logger="dynamtl"):
        d = dm.MGDA(solver="frank-wolfe").combine(torch.tensor(rows, dtype=torch.float64))
    torch.testing.assert_close(d, torch.tensor(expected, dtype=torch.float64))
    assert not caplog.records


# ------------------------------------------------------------- 6. non-finite values in any pass


class Poisoned:
    """A masked MSE that returns NaN on its ``at``-th call (1-based) and counts its calls;
    ``gradient=True`` keeps the value finite and makes its gradient NaN instead."""

    def __init__(self, at: int | None = None, gradient: bool = False):
        self.at, self.gradient, self.calls = at, gradient, 0

    def __call__(self, prediction, target):
        self.calls += 1
        loss = masked_mse(prediction, target)
        if self.calls == self.at:
            if self.gradient:  # d/dx √|x − x| is infinite at 0; times 0 the value stays finite
                return loss + 0.0 * (prediction - prediction.detach()).abs().sqrt().sum()
            return loss * float("nan")
        return loss


def snapshot(mtl, model, opt):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        copy.deepcopy(opt.state_dict()),
        copy.deepcopy(mtl.weighting.state_dict()),
        copy.deepcopy(mtl.aggregation.state_dict()),
    )



def poisoned_run(weighting, aggregation, loss, poisoned="b"):
    model = net(0, batchnorm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tasks = dm.Tasks({name: loss if name == poisoned else masked_mse for name in TASKS})
    return model, opt, dm.MultiTask(model, tasks, opt, weighting=weighting, aggregation=aggregation)


def calls_per_step(weighting_name, aggregation_name, poisoned):
    loss = Poisoned()
    _, _, mtl = poisoned_run(build("weighting", weighting_name), build("aggregation", aggregation_name), loss, poisoned)
    mtl.step(batch(1), batch(2))
    first = loss.calls
    mtl.step(batch(3), batch(4))
    return first, loss.calls - first


PAIRS = [(w, "sum") for w in WEIGHTINGS] + [("equal", a) for a in AGGREGATIONS if a != "sum"]


@pytest.mark.parametrize("gradient", [False, True], ids=["loss", "gradient"])
@pytest.mark.parametrize(("weighting_name", "aggregation_name"), PAIRS)
def test_non_finite_in_any_pass_is_named_and_leaves_everything_as_before(weighting_name, aggregation_name, gradient):
    # the primary task a where the extra passes evaluate the primary losses only (the meta pass,
    # HydaLearn's look-aheads), the auxiliary task b elsewhere
    poisoned = "a" if weighting_name in PRIMARY_PASSES else "b"
    first, per_step = calls_per_step(weighting_name, aggregation_name, poisoned)
    seen = set()
    for at in range(1, per_step + 1):
        loss = Poisoned(first + at, gradient)
        model, opt, mtl = poisoned_run(
            build("weighting", weighting_name), build("aggregation", aggregation_name), loss, poisoned
        )
        mtl.step(batch(1), batch(2))  # a good step: momentum, λ and histories are not at their start
        before = snapshot(mtl, model, opt)
        try:
            mtl.step(batch(3), batch(4))
        except dm.NonFiniteLossError as error:
            assert error.step == 2 and "in step 2 (1-based)" in str(error)
            assert poisoned in error.values or (gradient and "aggregation" in error.pass_name), str(error)
            assert error.pass_name in str(error)
            seen.add(error.pass_name)
            assert all(p.grad is None for p in model.parameters())
            assert mtl.steps == 1
        else:
            # a poisoned value that cannot reach the step: the pass's value is not used (e.g. a
            # look-ahead loss of a task that is not main) -- then the step must be finite
            assert all(torch.isfinite(p).all() for p in model.parameters()), (at, per_step)
            continue
        after = snapshot(mtl, model, opt)
        assert_same_state(after, before)
        mtl.step(batch(3), batch(4))  # the run goes on (the poison was one call)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "training" in seen or (gradient and any("aggregation" in s for s in seen))
    if not gradient:  # every pass that evaluates the poisoned task's loss is seen to fail
        assert seen >= PRIMARY_PASSES.get(weighting_name, set()), seen


PRIMARY_PASSES = {
    "auto-lambda": {"meta", "perturbation +εu (training batch)", "perturbation −εu (training batch)"},
    "hydalearn": {f"look-ahead of task {t!r} (training batch)" for t in TASKS},
}


def test_auto_lambda_nan_in_the_meta_input_names_the_meta_pass_in_that_step():
    model, _, mtl = poisoned_run(dm.AutoLambda(), None, masked_mse)
    mtl.step(batch(1), batch(2))
    lambdas = mtl.weighting.lambdas.detach().clone()
    x, y = batch(4)
    x = x.clone()
    x[0, 0] = float("nan")
    with pytest.raises(dm.NonFiniteLossError, match=r"in step 2 \(1-based\) .* in the meta pass") as caught:
        mtl.step(batch(3), (x, y))
    assert set(caught.value.values) == {"a", "b", "c"}
    assert torch.equal(mtl.weighting.lambdas.detach(), lambdas)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ----------------------------------------------------------------------------- 7. low precision


@pytest.mark.parametrize("seed", range(20))
def test_auto_lambda_in_float16_keeps_finite_float32_weights(seed):
    model = net(seed, torch.float16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weighting = dm.AutoLambda()
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), opt, weighting=weighting)
    for step in range(3):
        mtl.step(batch(seed + step, dtype=torch.float16), batch(100 + seed + step, dtype=torch.float16))
    assert weighting.lambdas.dtype == torch.float32
    assert torch.isfinite(weighting.lambdas).all()
    assert float((weighting.lambdas - 0.1).abs().max()) <= 3 * 1e-4 + 1e-6  # Adam moves λ by ≤ lr a step
    assert all(torch.isfinite(p).all() for p in model.parameters())


def floating_tensors(values):
    """The floating-point tensors in ``values``, at any depth of dicts, lists and tuples."""
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            yield value
        elif isinstance(value, dict):
            yield from floating_tensors(value.values())
        elif isinstance(value, (list, tuple)):
            yield from floating_tensors(value)


def cast(b, dtype):
    return b[0].to(dtype), {t: y.to(dtype) for t, y in b[1].items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("weighting_name", "aggregation_name"), PAIRS)
def test_half_precision_step_matches_float32(weighting_name, aggregation_name, dtype):
    results = {}
    for run_dtype in (torch.float32, dtype):
        model = net(0, torch.float32).to(dtype).to(run_dtype)  # the same (rounded) parameters
        tasks = dm.Tasks(dict.fromkeys(TASKS, F.mse_loss))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        mtl = dm.MultiTask(model, tasks, opt, weighting=build("weighting", weighting_name),
                           aggregation=build("aggregation", aggregation_name))
        b, meta = batch(1, dtype=dtype), batch(2, dtype=dtype)
        info = mtl.backward(cast(b, run_dtype), cast(meta, run_dtype))
        for state in floating_tensors([*mtl.weighting.state_dict().values(),
                                       *mtl.aggregation.state_dict().values()]):  # extra state too
            assert state.dtype in (torch.float32, torch.float64)  # never the model's half precision
        assert info.weights.dtype == torch.float32  # λ is never rounded to the model's half precision
        grad = torch.cat([p.grad.float().reshape(-1) for p in model.parameters() if p.grad is not None])
        assert torch.isfinite(info.weights).all() and torch.isfinite(grad).all()
        results[run_dtype] = (info.weights.float(), grad)
    (w32, g32), (w16, g16) = results[torch.float32], results[dtype]
    torch.testing.assert_close(w16, w32, rtol=0.05, atol=0.05)
    assert float((g16 - g32).norm()) <= 0.1 * float(g32.norm()) + 1e-3


# ------------------------------------------------------------ 8. errors in the user's model/loss


@pytest.mark.parametrize("loss", [F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss])
@pytest.mark.parametrize(("target_shape", "rows"), [((16, 1), 16), ((15,), 15), ((1, 16), 16)])
@pytest.mark.parametrize("weighting", ["equal", "auto-lambda"])
def test_a_target_a_loss_would_broadcast_is_refused_naming_task_pass_and_shapes(loss, target_shape, rows, weighting):
    """torch's element-wise losses broadcast a target of another shape against the prediction
    [16] (a [16, 16] loss for a [16, 1] target: silently wrong) with only a warning; the step
    refuses it, naming the task, the pass and both shapes, and changes nothing."""
    model = net(0)
    x, y = batch(1)
    mtl = dm.MultiTask(
        model, dm.Tasks(dict.fromkeys(TASKS, loss)), torch.optim.SGD(model.parameters(), lr=0.1),
        weighting=build("weighting", weighting),
    )
    mtl.step((x, y), meta_batch=batch(2))
    before = copy.deepcopy(model.state_dict())
    def wrong(task):
        return {**y, task: torch.randn(*target_shape, dtype=torch.float64)}

    passes = [("training", "b", ((x, wrong("b")), batch(2)))]
    if weighting == "auto-lambda":  # its meta loss is the primary task's, a
        passes.append(("meta", "a", ((x, y), (batch(2)[0], wrong("a")))))
    for pass_name, task, (train, meta) in passes:
        expected = (
            rf"the loss of task '{task}' would broadcast its prediction of shape \[16\] against its target of shape "
            rf"{re.escape(str(list(target_shape)))} in the {pass_name} pass: give the target the prediction's shape"
        )
        with pytest.raises(ValueError, match=expected):
            mtl.step(train, meta_batch=meta)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert rows in target_shape


def test_float_targets_for_cross_entropy_name_the_task():
    model = nn.Linear(4, 3)

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = model

        def forward(self, x):
            return {"cls": self.lin(x)}

    with pytest.raises(RuntimeError, match=r"the loss of task 'cls' raised RuntimeError in the training pass"):
        dm.MultiTask(Heads(), dm.Tasks({"cls": F.cross_entropy})).backward(
            (torch.randn(4, 4), {"cls": torch.tensor([0.0, 1.0, 2.0, 1.0])[:, None].expand(4, 2)})
        )


@pytest.mark.parametrize("name", [n for n in WEIGHTINGS if registry.WEIGHTINGS[n].factory.needs_meta_batch])
def test_meta_batch_of_another_width_names_the_meta_pass(name):
    model = net(0)
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, masked_mse)), torch.optim.SGD(model.parameters(), lr=0.1),
                       weighting=build("weighting", name))
    x, y = batch(2)
    with pytest.raises(RuntimeError, match=r"the model raised RuntimeError in the meta pass: mat1 and mat2"):
        mtl.step(batch(1), (torch.cat([x, x], 1), y))


def test_model_error_in_a_multi_input_task_names_it():
    model = net(0)
    b = batch(1, multi_input=True)
    b["b"] = (torch.randn(16, 5, dtype=torch.float64), b["b"][1])
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, masked_mse), multi_input=True))
    expected = r"the model called on the inputs of task 'b' raised RuntimeError in the training"
    with pytest.raises(RuntimeError, match=expected):
        mtl.backward(b)


# ----------------------------------------------------------------------------- 9. whose parameters


def test_auto_lambda_leaves_a_parameter_the_optimizer_does_not_own():
    model = net(0)
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if n != "heads.c.bias"], lr=0.1, momentum=0.9)
    before = model.heads.c.bias.detach().clone()
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, masked_mse)), opt, weighting=dm.AutoLambda())
    for step in range(2):
        mtl.step(batch(step), batch(10 + step))
    assert torch.equal(model.heads.c.bias.detach(), before)
    assert torch.isfinite(mtl.weighting.lambdas).all()


def test_an_optimizer_owning_none_of_the_parameters_is_refused():
    model = net(0)
    other = net(1)
    with pytest.raises(ValueError, match=r"owns none of the model's trainable parameters.*torch\.optim\.SGD\(model"):
        dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, masked_mse)), torch.optim.SGD(other.parameters(), lr=0.1))


@pytest.mark.parametrize(
    ("kind", "name"), [("weighting", n) for n in WEIGHTINGS] + [("aggregation", n) for n in AGGREGATIONS]
)
def test_one_method_object_for_two_multitasks_is_refused(kind, name):
    method = build(kind, name)
    tasks = dm.Tasks(dict.fromkeys(TASKS, masked_mse))
    first, second = net(0), net(1)
    held = dm.MultiTask(first, tasks, torch.optim.SGD(first.parameters(), lr=0.1), **{kind: method})
    with pytest.raises(ValueError, match=f"already belongs to another MultiTask.*its own {type(method).__name__}"):
        dm.MultiTask(second, tasks, torch.optim.SGD(second.parameters(), lr=0.1), **{kind: method})
    del held  # once the first run is gone, the object may start another
    dm.MultiTask(second, tasks, torch.optim.SGD(second.parameters(), lr=0.1), **{kind: method})


@pytest.mark.parametrize(
    ("kind", "name"), [("weighting", n) for n in WEIGHTINGS] + [("aggregation", n) for n in AGGREGATIONS]
)
def test_one_method_object_for_a_lightning_module_and_another_run_is_refused(kind, name):
    """The rule holds for MultiTaskModule too: a second module, or a MultiTask, given the
    object a live module holds is refused (same tasks: the bind check does not catch it)."""
    from dynamtl.lightning import MultiTaskModule

    method = build(kind, name)
    tasks = dm.Tasks(dict.fromkeys(TASKS, masked_mse))

    def module():
        return MultiTaskModule(net(0), tasks, lambda p: torch.optim.SGD(p, lr=0.1), **{kind: method})

    held = module()
    cls = type(method).__name__
    with pytest.raises(ValueError, match=f"already belongs to another MultiTaskModule.*its own {cls}"):
        module()
    with pytest.raises(ValueError, match=f"already belongs to another MultiTaskModule.*its own {cls}"):
        dm.MultiTask(net(1), tasks, **{kind: method})
    del held
    module()


WRAPPED = [n for n in GRADIENT_AGGREGATIONS if not registry.AGGREGATIONS[n].factory.rows_across_batches]


@pytest.mark.parametrize(("wrapper", "name"), [(w, n) for w in ("CRMOGM", "OnRepresentation") for n in WRAPPED
                                               if (w, n) != ("CRMOGM", "cr-mogm")])  # that one is refused
def test_an_inner_aggregation_belongs_to_one_run_only(name, wrapper):
    """The aggregation inside CR-MOGM or OnRepresentation is one run's too: the same object
    in two wrappers of two runs, or wrapped in one run and direct in another, is refused."""
    inner = build("aggregation", name)
    tasks = dm.Tasks(dict.fromkeys(TASKS, masked_mse))
    wrap = getattr(dm, wrapper)
    first = dm.MultiTask(net(0), tasks, representation="trunk", aggregation=wrap(inner))
    match = rf"this {type(inner).__name__} object( \(inside {wrapper}\))? already belongs to another MultiTask"
    with pytest.raises(ValueError, match=match):
        dm.MultiTask(net(1), tasks, representation="trunk", aggregation=wrap(inner))
    with pytest.raises(ValueError, match=match):
        dm.MultiTask(net(1), tasks, representation="trunk", aggregation=inner)
    del first
    dm.MultiTask(net(1), tasks, representation="trunk", aggregation=wrap(inner))


SCHEDULERS = {
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1),
    "one-cycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10),
}


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("name", WEIGHTINGS)
def test_scheduler_built_before_multitask_works_or_fails_at_construction(name, scheduler):
    model = net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = SCHEDULERS[scheduler](opt)
    weighting = build("weighting", name)
    tasks = dm.Tasks(dict.fromkeys(TASKS, masked_mse))
    try:
        mtl = dm.MultiTask(model, tasks, opt, weighting=weighting)
    except ValueError as error:
        assert "build the scheduler after MultiTask" in str(error)
        assert weighting.model_optimizer_parameters()
        return
    for step in range(3):
        mtl.step(batch(step), batch(10 + step))
        sched.step()


# ------------------------------------------------------------- 10. arguments of the wrong kind


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: dm.Static([1.0, 0.5]), r"Static's option weights maps task names to finite numbers.*got list"),
        (lambda: dm.Tasks(["a", "b"]), r"Tasks takes a mapping task name -> loss function.*got list"),
        (lambda: dm.Tasks({"a": nn.MSELoss}), r"the class MSELoss, not a loss: give an instance, MSELoss\(\)"),
        (lambda: dm.FAMO(min_losses=[0.0, 0.0]),
         r"FAMO's option min_losses maps task names to finite numbers, e.g. FAMO\(min_losses="),
        (lambda: dm.AutoLambda(primary=0),
         r"AutoLambda's option primary is a task name or a list of task names, got int 0"),
        (lambda: dm.HydaLearn(main={"a": 1.0}),
         r"HydaLearn's option main is a task name or a list of task names, got dict"),
        (lambda: dm.GCS(main=["a", 1]), r"GCS's option main is a task name or a list of task names, got list"),
        (lambda: dm.OLAux(main=None), r"OLAux's option main is a task name or a list of task names, got NoneType"),
        (lambda: dm.GradDrop(leak="0.1"),
         r"GradDrop's option leak is one number or a list of numbers in task order.*got str"),
        (lambda: dm.AlignedMTL(pref={"a": 1.0}),
         r"AlignedMTL's option pref is a list of numbers in task order.*got dict"),
        (lambda: dm.MultiTask(net(0), dm.Tasks({"a": F.mse_loss}), weighting=dm.AutoLambda),
         r"weighting must be a weighting instance such as dm.AutoLambda\(\), got the class AutoLambda"),
        (lambda: dm.MultiTask(net(0), dm.Tasks({"a": F.mse_loss}), aggregation="pcgrad"),
         r"aggregation must be an aggregation instance such as dm.PCGrad\(\), got str"),
        (lambda: dm.MultiTask(net(0), {"a": F.mse_loss}), r"tasks must be dm.Tasks"),
        (lambda: dm.MultiTask(net(0), dm.Tasks({"a": F.mse_loss}), net(1).parameters()),
         r"optimizer must be a torch.optim.Optimizer instance, got generator"),
        (lambda: dm.MultiTask(net(0), dm.Tasks({"a": F.mse_loss}), scaler=torch.amp.GradScaler),
         r"scaler must be a torch.amp.GradScaler instance, got the class GradScaler"),
        (lambda: dm.MultiTask(net(0), dm.Tasks({"a": F.mse_loss}), scaler=True),
         r"scaler must be a torch.amp.GradScaler instance, got bool"),
        (lambda: dm.Static({"a": 1.0, "b": "x"}),
         r"Static's option weights maps task names to finite numbers.*got dict \{'a': 1.0, 'b': 'x'\}"),
    ],
)
def test_constructors_say_what_they_expect(make, match):
    with pytest.raises(TypeError, match=match):
        make()



SCALAR_OPTIONS = [
    (kind, name, option, hint)
    for kind, methods in (("weighting", registry.WEIGHTINGS), ("aggregation", registry.AGGREGATIONS))
    for name, method in sorted(methods.items())
    for option, hint in method.option_types().items()
    if hint in (float, int, bool, float | None, int | None, bool | None)
]


@pytest.mark.parametrize(("kind", "name", "option", "hint"), SCALAR_OPTIONS)
def test_every_scalar_option_refuses_a_value_of_another_kind_naming_method_and_option(kind, name, option, hint):
    """A number or flag written as a string (as a config file or a hand-made dict gives it), a
    list, or — for integers — a float, is refused with the class, the option and the fix; the
    registry's own parsing is not involved (the method is built from the Python API)."""
    method = (registry.WEIGHTINGS if kind == "weighting" else registry.AGGREGATIONS)[name]
    context = registry.MethodContext(tasks=TASKS, primary=("a",), auxiliary=True, seed=0)
    needed = {n: REQUIRED[n](TASKS) for n, d in method.option_defaults().items() if d is inspect.Parameter.empty}
    default = method.option_defaults()[option]
    text = str(default if default not in (None, inspect.Parameter.empty) else 1)
    cls = method.factory.__name__
    wrong = [text, [1.0]] + ([2.5] if hint in (int, int | None) else [])
    filled = {n: fill(context) for n, fill in method.context.items()}
    for value in wrong:
        with pytest.raises(TypeError, match=rf"{cls}'s option {option} must be .*got {re.escape(repr(value))}"):
            method.factory(**filled, **needed, **{option: value})
    if default is not inspect.Parameter.empty:  # the right kind still builds
        method.factory(**filled, **needed, **{option: default})


def test_the_scalar_options_are_found_in_the_registry():
    assert len(SCALAR_OPTIONS) > 40 and ("weighting", "auto-lambda", "lr", float) in SCALAR_OPTIONS


def test_a_string_option_says_to_drop_the_quotes():
    quotes = r"CAGrad's option c must be a number, got '0.4' \(str\): write CAGrad\(c=0.4\) without quotes"
    with pytest.raises(TypeError, match=quotes):
        dm.CAGrad(c="0.4")
    with pytest.raises(TypeError, match=r"AutoLambda's option nonnegative must be True or False, got 'False'"):
        dm.AutoLambda(nonnegative="False")
    integer = r"AutoLambda's option interval must be an integer, got 2.0 \(float\): write AutoLambda\(interval=2\)"
    with pytest.raises(TypeError, match=integer):
        dm.AutoLambda(interval=2.0)
    # a word in quotes is not a number in quotes: no 'MoCo(rho=a)' as the fix
    with pytest.raises(TypeError, match=r"MoCo's option rho must be a number, got 'a' \(str\): give a number such "
                       r"as MoCo\(rho=0.1\)$"):
        dm.MoCo(rho="a")
    with pytest.raises(TypeError, match=r"got 'x' \(str\): give an integer such as FairGrad\(max_iters=100\)$"):
        dm.FairGrad(max_iters="x")
    with pytest.raises(TypeError, match=r"FairGrad\(max_iters=3\) without quotes"):
        dm.FairGrad(max_iters="3")
    assert dm.AutoLambda(lr=torch.tensor(1e-3)).lr == torch.tensor(1e-3)  # a 0-d tensor is a number
    assert dm.AutoLambda(lr=np.float32(1e-3)).lr == np.float32(1e-3)


# --------------------------------------------------------------------- options, from their types

def registered(kinds=("weighting", "aggregation")):
    """(kind, name, method) of every registered method (stl is Equal under another name)."""
    tables = {"weighting": registry.WEIGHTINGS, "aggregation": registry.AGGREGATIONS}
    return [(kind, name, m) for kind in kinds for name, m in sorted(tables[kind].items()) if not m.single_task]


def parameters(method):
    """Every constructor parameter of the method's class with its annotation (a string)."""
    params = list(inspect.signature(method.factory.__init__).parameters.values())[1:]
    return {p.name: (p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation))
            for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def make(method, /, **options):
    """The method's class built from Python with ``options`` (its context, for tasks ``TASKS``,
    and its required options filled unless given)."""
    context = registry.MethodContext(tasks=TASKS, primary=("a",), auxiliary=True, seed=0)
    filled = {n: fill(context) for n, fill in method.context.items() if n not in options}
    needed = {n: REQUIRED[n](TASKS) for n, d in method.option_defaults().items()
              if d is inspect.Parameter.empty and n not in options}
    return method.factory(**filled, **needed, **options)


def options_annotated(test):
    """(kind, name, option) of every constructor parameter whose annotation passes ``test``."""
    return [(kind, name, option) for kind, name, method in registered()
            for option, annotation in parameters(method).items() if test(annotation)]


def alternatives(annotation):
    return {part.strip() for part in annotation.split(" | ")}


NUMERIC = options_annotated(lambda a: alternatives(a) - {"None"} in ({"float"}, {"int"}))
FLOATS = options_annotated(lambda a: alternatives(a) - {"None"} == {"float"})
PER_TASK_LISTS = options_annotated(lambda a: "Sequence[float]" in a)
PER_TASK_MAPS = options_annotated(lambda a: "Mapping[str, float]" in a)
NAME_LISTS = options_annotated(lambda a: "Sequence[str]" in a or "list[str]" in a)
FLAGS = options_annotated(lambda a: alternatives(a) - {"None"} == {"bool"})


def method_of(kind, name):
    return (registry.WEIGHTINGS if kind == "weighting" else registry.AGGREGATIONS)[name]


def test_the_option_kinds_are_found_in_the_registry():
    assert ("aggregation", "upgrad", "pref") in PER_TASK_LISTS and ("aggregation", "config", "pref") in PER_TASK_LISTS
    assert ("weighting", "stch", "preference") in PER_TASK_MAPS and ("weighting", "stch", "ideal") in PER_TASK_MAPS
    assert ("weighting", "imtl-l", "tasks") in NAME_LISTS and ("aggregation", "moco", "normalize") in FLAGS
    assert len(FLOATS) > 40 and len(NUMERIC) > len(FLOATS)


@pytest.mark.parametrize(("kind", "name", "option"), NUMERIC)
def test_every_numeric_option_declares_its_range(kind, name, option):
    """The audit: a method that adds a number option says which values it takes (a new one
    without a declared interval fails here)."""
    assert option in method_of(kind, name).factory.option_ranges, f"declare {option} in option_ranges"


@pytest.mark.parametrize(("kind", "name", "option"), FLOATS)
def test_every_float_option_refuses_nan_and_infinities_naming_method_option_value_and_range(kind, name, option):
    method = method_of(kind, name)
    interval = method.factory.option_ranges[option]
    cls = method.factory.__name__
    for value in (math.nan, math.inf, -math.inf):
        if value in interval:  # declared meaningful next to the method
            continue
        expected = rf"{cls}'s option {option} must be {re.escape(interval.words())}, got {re.escape(repr(value))}"
        with pytest.raises(ValueError, match=expected):
            make(method, **{option: value})


def just_outside(interval, integer):
    """Values just outside the finite ends of ``interval``."""
    low, high = (float(part) for part in interval.text[1:-1].split(","))
    step = 1 if integer else 1e-9
    out = []
    if math.isfinite(low):
        out.append(low - step if interval.text[0] == "[" else low)
    if math.isfinite(high):
        out.append(high + step if interval.text[-1] == "]" else high)
    return [int(v) for v in out] if integer else out


@pytest.mark.parametrize(("kind", "name", "option"), NUMERIC)
def test_every_numeric_option_refuses_values_just_outside_its_range(kind, name, option):
    method = method_of(kind, name)
    interval = method.factory.option_ranges[option]
    integer = alternatives(parameters(method)[option]) - {"None"} == {"int"}
    for value in just_outside(interval, integer):
        with pytest.raises(ValueError, match=rf"'s option {option} must be .*, got {re.escape(repr(value))}"):
            make(method, **{option: value})


def some_values(count):
    return [0.25 * (i + 1) for i in range(count)]  # valid for every per-task option (GradDrop: in [0, 1])


def per_task_methods(kind, name, option, values):
    """The method with ``option=values``, alone and (for a gradient aggregation) inside the
    wrappers that compose one."""
    built = [make(method_of(kind, name), **{option: values})]
    if kind == "aggregation" and isinstance(built[0], GradientAggregation) and not built[0].rows_across_batches:
        built += [dm.CRMOGM(make(method_of(kind, name), **{option: values})),
                  dm.OnRepresentation(make(method_of(kind, name), **{option: values}))]
    return built


def multitask(method, names=("a", "b")):
    tasks = dm.Tasks(dict.fromkeys(names, masked_mse))
    role = "aggregation" if isinstance(method, dm.Aggregation) else "weighting"
    return dm.MultiTask(net(0), tasks, representation="trunk", **{role: method})


@pytest.mark.parametrize(("kind", "name", "option"), PER_TASK_LISTS)
def test_a_per_task_list_of_the_wrong_length_is_refused_when_the_tasks_are_bound(kind, name, option):
    cls = method_of(kind, name).factory.__name__
    expected = rf"{cls}'s option {option} has 3 value\(s\) but there are 2 tasks \['a', 'b'\]: give 2 values"
    for method in per_task_methods(kind, name, option, some_values(3)):
        with pytest.raises(ValueError, match=expected):
            multitask(method)
    for values in (some_values(2), tuple(some_values(2)), torch.tensor(some_values(2))):  # every sequence kind
        for method in per_task_methods(kind, name, option, values):
            multitask(method)
    with pytest.raises(ValueError, match=rf"{cls}'s option {option} must hold finite numbers"):
        make(method_of(kind, name), **{option: [1.0, math.nan]})
    listed = rf"{cls}'s option {option} is .*a list of numbers in task order.*got str '1,2'"
    with pytest.raises(TypeError, match=listed):
        make(method_of(kind, name), **{option: "1,2"})


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize(("kind", "name", "option"), PER_TASK_LISTS + PER_TASK_MAPS)
def test_the_command_line_refuses_a_per_task_option_that_does_not_fit_before_training(
    kind, name, option, command, tmp_path
):
    """Checked when the runs are planned: exit status 2 with the problem, and no folder."""
    from click.testing import CliRunner

    from dynamtl.cli.main import main

    value = "0.25,0.5,0.75" if (kind, name, option) in PER_TASK_LISTS else "main:1,nosuch:2"
    out = tmp_path / "run"
    method = ["--method", name] if command == "train" else ["--methods", name, "--seeds", "0", "--jobs", "1"]
    result = CliRunner().invoke(main, [command, "--benchmark", "drift", *method, "--option", f"{option}={value}",
                                       "--epochs", "1", "--limit", "64", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"option {option} " in result.output and "['main', 'aux']" in result.output
    assert not out.exists()


@pytest.mark.parametrize(("kind", "name", "option"), PER_TASK_MAPS)
def test_a_per_task_mapping_is_a_mapping_of_known_task_names(kind, name, option):
    method, cls = method_of(kind, name), method_of(kind, name).factory.__name__
    for wrong in ([1.0, 2.0], "a:1", {"a": "x"}, {"a": math.nan}):
        with pytest.raises(TypeError, match=rf"{cls}'s option {option} maps task names to finite numbers"):
            make(method, **{option: wrong})
    with pytest.raises(ValueError, match=rf"{cls}'s option {option} names task\(s\) \['z'\] that are not among"):
        multitask(make(method, **{option: {"a": 1.0, "z": 1.0}}))


@pytest.mark.parametrize(("kind", "name", "option"), NAME_LISTS)
def test_task_names_are_not_split_into_characters(kind, name, option):
    method, cls = method_of(kind, name), method_of(kind, name).factory.__name__
    if "str" in alternatives(parameters(method)[option]):  # one name is accepted as such
        make(method, **{option: "a"})
    else:
        with pytest.raises(TypeError, match=rf"{cls}'s option {option} is a list of task names, got str 'a': "
                                            rf"write {cls}\({option}=\['a'\]\)"):
            make(method, **{option: "a"})
    make(method, **{option: ("a",)})
    with pytest.raises(TypeError, match=rf"{cls}'s option {option} is .*task names, got list \[1\]"):
        make(method, **{option: [1]})


@pytest.mark.parametrize(("kind", "name", "option"), FLAGS)
def test_a_flag_given_a_word_is_told_a_valid_bool(kind, name, option):
    method, cls = method_of(kind, name), method_of(kind, name).factory.__name__
    for word, fix in (("no", f"{option}=False"), ("Yes", f"{option}=True"), ("maybe", f"{option}=True\\) or")):
        with pytest.raises(TypeError, match=rf"{cls}'s option {option} must be True or False.*write {cls}\({fix}"):
            make(method, **{option: word})


COMPOSABLE = [n for n in GRADIENT_AGGREGATIONS if not registry.AGGREGATIONS[n].factory.rows_across_batches]
SMOOTHABLE = [n for n in COMPOSABLE if n != "cr-mogm"]  # CRMOGM(CRMOGM(...)) is refused


@pytest.mark.parametrize("name", COMPOSABLE)
def test_the_repr_of_every_method_and_wrapper_is_one_eval_like_line(name):
    inner = build("aggregation", name)
    smoothed = [dm.CRMOGM(build("aggregation", name), beta=0.5)] if name in SMOOTHABLE else []
    for method in (inner, *smoothed, dm.OnRepresentation(build("aggregation", name))):
        text = repr(method)
        assert "\n" not in text and text.startswith(f"{type(method).__name__}(")
        assert repr(inner) in text
        if "lambda" not in text:
            assert repr(eval(text, vars(dm))) == text
    assert not smoothed or "beta=0.5" in repr(smoothed[0])


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, n, _ in registered()])
def test_every_method_repr_is_one_line_naming_its_options(kind, name):
    method = build(kind, name)
    text = repr(method)
    assert "\n" not in text
    for option in method_of(kind, name).options:
        assert f"{option}=" in text


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, n, _ in registered()])
def test_every_method_survives_deepcopy_and_pickle(kind, name):
    """copy.deepcopy and pickle rebuild a method bare and put its state back; a method with a
    required option (Static's weights) must survive that too."""
    method = build(kind, name)
    if kind == "weighting":
        method.bind(TASKS)
    for twin in (copy.deepcopy(method), pickle.loads(pickle.dumps(method))):
        assert type(twin) is type(method) and repr(twin) == repr(method)
        assert_same_state(twin.state_dict(), method.state_dict())


def test_a_missing_required_option_is_still_named():
    with pytest.raises(TypeError, match="Static"):
        dm.Static()


def absent_weights_cases():
    cases = [(n, lambda n=n: build("aggregation", n)) for n in AGGREGATIONS]
    cases += [(f"cr-mogm({n})", lambda n=n: dm.CRMOGM(build("aggregation", n))) for n in SMOOTHABLE]
    cases += [(f"representation({n})", lambda n=n: dm.OnRepresentation(build("aggregation", n))) for n in COMPOSABLE]
    return cases


@pytest.mark.parametrize(("label", "make_aggregation"), absent_weights_cases(),
                         ids=[c[0] for c in absent_weights_cases()])
def test_the_logged_weight_of_an_absent_task_is_zero_for_every_aggregation(label, make_aggregation):
    """One convention: a task absent from the step contributed nothing, its αₖ is 0 — on the
    parameters or on the representation, alone or smoothed by CR-MOGM."""
    aggregation = make_aggregation()
    model = net(0)
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, masked_mse)), torch.optim.SGD(model.parameters(), lr=0.1),
                       aggregation=aggregation, representation="trunk")
    for seed in (1, 2):
        info = mtl.step(unlabelled(batch(seed), "c"))
        alpha = info.aggregation_weights
        assert alpha is not None and float(alpha[2]) == 0.0
        assert bool((alpha[:2] != 0).any())
        assert aggregation.last_weights.tolist() == alpha.tolist()
        assert info.as_dict()["aggregation_weight/c"] == 0.0


@pytest.mark.parametrize("command", ["train", "compare"])
def test_an_exception_while_training_gives_a_nonzero_exit_status(command, tmp_path):
    """A real process whose every step fails (the aggregation raises): train and compare end
    with a non-zero status, never 0."""
    import subprocess
    import sys

    script = (
        "import sys; import dynamtl.aggregation.upgrad as u\n"
        "def fail(*args): raise RuntimeError('injected failure in a step')\n"
        "u.UPGrad.active_weights = fail\n"
        "from dynamtl.cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["--benchmark", "drift", "--epochs", "1", "--limit", "64", "--quiet", "--threads", "1",
            "--out", str(tmp_path / "out")]
    args += ["--method", "upgrad"] if command == "train" else ["--methods", "upgrad", "--seeds", "0", "--jobs", "1"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script, command, *args], capture_output=True, text=True,
                            timeout=300, env=env, check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "injected failure in a step" in result.stderr


# ------------------------------------------------- options that name parameters of the model

MODEL_OPTIONS = [(kind, name, option) for kind, name, m in registered()
                 for option in getattr(m.factory, "parameter_options", ())]


def test_the_options_naming_model_parameters_are_declared():
    """Audit: an option that names parameters of the model is declared in
    ``parameter_options`` (so it is checked before training); today GradNorm's layer."""
    assert MODEL_OPTIONS == [("weighting", "gradnorm", "layer")]
    for kind, name, option in MODEL_OPTIONS:
        assert option in method_of(kind, name).options


@pytest.mark.parametrize(("kind", "name", "option"), MODEL_OPTIONS)
def test_an_option_naming_no_parameter_of_the_model_is_refused_when_the_model_is_known(kind, name, option):
    import lightning  # noqa: F401  (the Lightning module checks it at construction too)

    from dynamtl.lightning import MultiTaskModule

    cls = method_of(kind, name).factory.__name__
    expected = rf"{cls}'s option {option} names \['zz'\], which the model has no trainable parameter.*trunk\.0\.weight"
    with pytest.raises(ValueError, match=expected):
        multitask(make(method_of(kind, name), **{option: "zz"}))
    with pytest.raises(ValueError, match=expected):
        multitask(make(method_of(kind, name), **{option: ["trunk.0.weight", "zz"]}))
    with pytest.raises(ValueError, match=expected):
        role = "aggregation" if kind == "aggregation" else "weighting"
        MultiTaskModule(net(0), dm.Tasks(dict.fromkeys(("a", "b"), masked_mse)),
                        lambda p: torch.optim.SGD(p, lr=0.1), **{role: make(method_of(kind, name), **{option: "zz"})})
    with pytest.raises(ValueError, match=rf"{cls}'s option {option}"):
        make(method_of(kind, name), **{option: ""})
    multitask(make(method_of(kind, name), **{option: "trunk.0.weight"}))


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize(("kind", "name", "option"), MODEL_OPTIONS)
def test_the_command_line_refuses_an_option_naming_no_parameter_before_training(kind, name, option, command,
                                                                                  tmp_path):
    from click.testing import CliRunner

    from dynamtl.cli.main import main

    out = tmp_path / "run"
    method = ["--method", name] if command == "train" else ["--methods", name, "--seeds", "0", "--jobs", "1"]
    for value in ("zz", ""):
        result = CliRunner().invoke(main, [command, "--benchmark", "drift", *method, "--option", f"{option}={value}",
                                           "--epochs", "1", "--limit", "64", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert f"option {option} " in result.output and ("['zz']" in result.output or "['']" in result.output)
        assert not out.exists()


@pytest.mark.parametrize(("kind", "name", "option"), MODEL_OPTIONS)
def test_the_command_line_refuses_a_head_parameter_before_training_listing_only_shared_ones(kind, name, option,
                                                                                          tmp_path):
    """A head parameter (one task's) is no shared layer: exit 2 before any folder, and the
    choices offered are the shared parameters only."""
    from click.testing import CliRunner

    from dynamtl.cli.main import main

    out = tmp_path / "run"
    for value in ("heads.main.weight", "trunk.0.weight,heads.aux.bias", "zz"):
        result = CliRunner().invoke(main, ["train", "--benchmark", "drift", "--method", name, "--option",
                                           f"{option}={value}", "--epochs", "1", "--limit", "64", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and "trunk.0.weight" in result.output, result.output
        assert "heads." not in result.output.split("choose among")[1], result.output
        if value != "zz":
            assert "belong to one task's head" in result.output, result.output
        assert not out.exists()


# ------------------------------------------------------------------------- huge integers

@pytest.mark.parametrize(("kind", "name", "option"), NUMERIC)
@pytest.mark.parametrize("sign", [1, -1])
def test_a_huge_integer_is_refused_naming_method_option_and_range(kind, name, option, sign):
    """No OverflowError: an integer too large for a float option, or outside the 64-bit range
    of an integer option, gets the usual message."""
    cls = method_of(kind, name).factory.__name__
    for value in (sign * 10**400, sign * 2**70):
        if abs(value) == 2**70 and "float" in alternatives(parameters(method_of(kind, name))[option]):
            continue  # a float option takes 2**70 where its range does
        with pytest.raises(ValueError, match=rf"{cls}'s option {option} must be .*got "):
            make(method_of(kind, name), **{option: value})


@pytest.mark.parametrize("arguments", [["--method", "upgrad", "--option", "max_iters=1" + "0" * 400],
                                       ["--method", "cagrad", "--option", "c=1" + "0" * 400],
                                       ["--method", "rlw", "--seed", str(10**23)]])
def test_the_command_line_refuses_a_huge_integer_with_exit_2(arguments, tmp_path):
    from click.testing import CliRunner

    from dynamtl.cli.main import main

    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--benchmark", "drift", *arguments, "--epochs", "1", "--limit", "64",
                                       "--out", str(out)])
    assert result.exit_code == 2, result.output
    # a float option's huge integer is refused as written (it would read as inf)
    assert re.search(r"(max_iters|option c|seed) must be|'c' of 'cagrad' expects a number within a float's range",
                     result.output), result.output
    assert not out.exists()


@pytest.mark.parametrize(("kind", "name", "option"), PER_TASK_LISTS + PER_TASK_MAPS)
@pytest.mark.parametrize("huge", [10**400, -(10**400)])
def test_a_huge_integer_inside_a_per_task_option_is_refused_naming_method_and_option(kind, name, option, huge):
    """No OverflowError from a list, a mapping, or a per-task option given one number."""
    cls = method_of(kind, name).factory.__name__
    mapping = (kind, name, option) in PER_TASK_MAPS
    given = [dict(zip(TASKS, [huge, 0.5, 0.5]))] if mapping else [[huge, 0.5, 0.5], (0.5, huge, 0.5)]
    if not mapping and "float" in alternatives(parameters(method_of(kind, name))[option]):
        given.append(huge)
    for value in given:
        with pytest.raises(ValueError, match=rf"{cls}'s option {option} must hold finite numbers, got an integer "
                                             r"of 401 digits .*too large for a float"):
            make(method_of(kind, name), **{option: value})


@pytest.mark.parametrize(("kind", "name", "option"), FLOATS)
def test_a_one_element_1d_tensor_is_not_a_number_for_a_float_option(kind, name, option):
    """``torch.tensor([0.5])`` has a dimension: refused, naming the class, the option and the fix
    (a 0-d tensor or a Python number), as a list ``[0.5]`` is."""
    cls = method_of(kind, name).factory.__name__
    with pytest.raises(TypeError, match=rf"{cls}'s option {option} must be a number.*shape \[1\] is a list"):
        make(method_of(kind, name), **{option: torch.tensor([0.5], dtype=torch.float64)})


@pytest.mark.parametrize(("kind", "name", "option"), PER_TASK_LISTS + PER_TASK_MAPS)
def test_a_one_element_1d_tensor_inside_a_per_task_option_is_refused(kind, name, option):
    cls = method_of(kind, name).factory.__name__
    values = [torch.tensor([0.25]), 0.5, 0.75]
    given = dict(zip(TASKS, values)) if (kind, name, option) in PER_TASK_MAPS else values
    with pytest.raises(TypeError, match=rf"{cls}'s option {option} "):
        make(method_of(kind, name), **{option: given})


# ------------------------------------------------------------ relative task weights (pref)

WEIGHT_OPTIONS = [(kind, name, option) for kind, name, m in registered()
                  for option in getattr(m.factory, "weight_options", ())]


def test_every_preference_like_option_is_declared_as_relative_weights():
    """Audit: every per-task option that weighs the tasks against each other (a preference)
    is declared in ``weight_options``, so each refuses negatives, all zeros and emptiness."""
    preferences = {(k, n, o) for k, n, o in PER_TASK_LISTS + PER_TASK_MAPS if o in ("pref", "preference")}
    assert preferences == set(WEIGHT_OPTIONS)
    assert ("aggregation", "aligned-mtl", "pref") in preferences and len(preferences) == 5


@pytest.mark.parametrize(("kind", "name", "option"), WEIGHT_OPTIONS)
def test_relative_task_weights_are_non_negative_and_not_all_zero(kind, name, option):
    method, cls = method_of(kind, name), method_of(kind, name).factory.__name__
    mapping = (kind, name, option) in PER_TASK_MAPS

    def given(values):
        return dict(zip(TASKS, values)) if mapping else values

    with pytest.raises(ValueError, match=rf"{cls}'s option {option} must hold numbers >= 0"):
        make(method, **{option: given([-1.0, 1.0])})
    for values in ([0.0, 0.0], []):
        with pytest.raises(ValueError, match=rf"{cls}'s option {option} holds .*task weights.*: .*not all 0"):
            make(method, **{option: given(values)})
    make(method, **{option: given([0.0, 1.0, 2.0])})


@pytest.mark.parametrize(("kind", "name", "option"), WEIGHT_OPTIONS)
@pytest.mark.parametrize("scale", [1e-320, 1e-200, 1e200, 1e308])
def test_task_weights_of_any_scale_are_refused_or_taken_as_their_ratios(kind, name, option, scale):
    """Where only the ratios of the weights matter (``relative_weight_options``) a scale that
    would under- or overflow is removed: the step is the one at ``[1, 1, 1]``; where the
    scale enters the update it is refused, the message saying the scale matters. Never a
    frozen trunk, an overflow or a solver crash."""
    method, cls = method_of(kind, name), method_of(kind, name).factory.__name__
    mapping = (kind, name, option) in PER_TASK_MAPS

    def given(values):
        return dict(zip(TASKS, values)) if mapping else values

    def grads(values):
        built = make(method, **{option: given(values)})
        roles = (None, built) if isinstance(built, dm.Aggregation) else (built, None)
        return grads_after_backward(*roles, TASKS, batch(0), None)[0]

    if option in getattr(method.factory, "relative_weight_options", ()):
        reference = grads([1.0, 1.0, 1.0])
        for values in ([scale] * 3, [scale, 0.0, scale]):
            got = grads(values)
            if values[1] == 0.0:
                shared = got["trunk.0.weight"]
                assert torch.isfinite(shared).all() and shared.abs().sum() > 0
            else:
                assert_same_gradients(got, reference)
        return
    truthful = rf"{cls}'s option {option} holds task weights that scale each task's share of the update"
    for values in ([scale] * 3, [scale, 0.0, 1.0]):
        with pytest.raises(ValueError, match=truthful + r".*0 or between 1e-30 and 1e\+30"):
            make(method, **{option: given(values)})


@pytest.mark.parametrize("kind", ["train", "compare"])
def test_the_command_line_refuses_a_negative_aligned_mtl_preference(kind, tmp_path):
    from click.testing import CliRunner

    from dynamtl.cli.main import main

    out = tmp_path / "run"
    method = ["--method", "aligned-mtl"] if kind == "train" else ["--methods", "aligned-mtl", "--seeds", "0"]
    for value in ("-1,1", "0,0"):
        result = CliRunner().invoke(main, [kind, "--benchmark", "drift", *method, "--option", f"pref={value}",
                                           "--epochs", "1", "--limit", "64", "--out", str(out)])
        assert result.exit_code == 2 and "AlignedMTL's option pref" in result.output, result.output
        assert not out.exists()


def test_graddrop_leak_takes_any_one_number_kind_and_checks_each_value():
    assert dm.GradDrop(leak=torch.tensor(0.5)).leak == 0.5
    assert dm.GradDrop(leak=np.float64(0.25)).leak == 0.25
    with pytest.raises(ValueError, match=r"GradDrop's option leak must hold numbers in \[0, 1\]"):
        dm.GradDrop(leak=np.int64(3))
    with pytest.raises(ValueError, match=r"GradDrop's option leak must hold numbers in \[0, 1\]"):
        dm.GradDrop(leak=[0.2, 1.5])


# ------------------------------------------------------- choices and callables, from their types

def choice_options():
    """(kind, name, option, choices, takes_callable) of every option typed only by Literal
    choices and callables (and None)."""
    import collections.abc
    import typing

    found = []
    for kind, name, method in registered():
        hints = typing.get_type_hints(method.factory.__init__)
        for option in method.options:
            hint = hints[option]
            parts = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
            parts = [p for p in parts if p is not type(None)]
            choices = [c for p in parts if typing.get_origin(p) is typing.Literal for c in typing.get_args(p)]
            callables = [p for p in parts if typing.get_origin(p) is collections.abc.Callable]
            if parts and len(callables) + sum(typing.get_origin(p) is typing.Literal for p in parts) == len(parts):
                found.append((kind, name, option, tuple(choices), bool(callables)))
    return found


CHOICES = choice_options()


def test_the_choice_options_are_found():
    names = {(n, o) for _, n, o, _, _ in CHOICES}
    assert {("auto-lambda", "meta_optimizer"), ("gcs", "variant"), ("hydalearn", "gain"),
            ("aligned-mtl", "scale"), ("mgda", "solver")} <= names


@pytest.mark.parametrize(("kind", "name", "option", "choices", "takes_callable"), CHOICES)
def test_a_choice_option_refuses_anything_else_naming_class_option_and_choices(kind, name, option, choices,
                                                                                takes_callable):
    method, cls = method_of(kind, name), method_of(kind, name).factory.__name__
    expected = rf"{cls}'s option {option} must be " + ("one of " + re.escape(repr(list(choices))) if
                                                      choices else "a callable")
    with pytest.raises(ValueError, match=expected):
        make(method, **{option: "nosuch"})
    for wrong in (3, math.nan, np.array([0.5, 0.5]), [choices[0]] if choices else [1]):
        with pytest.raises(TypeError, match=expected):
            make(method, **{option: wrong})
    for right in choices:
        make(method, **{option: right})
    if takes_callable:
        make(method, **{option: lambda params: torch.optim.SGD(params, lr=0.1)})


def test_the_command_line_message_for_a_name_lists_the_names_only(tmp_path):
    from click.testing import CliRunner

    from dynamtl.cli.main import main

    result = CliRunner().invoke(main, ["train", "--benchmark", "drift", "--method", "auto-lambda", "--mode",
                                       "auxiliary", "--option", "meta_optimizer=3", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "must be one of ['adam', 'sgd'], got '3'" in result.output, result.output
    assert "cannot give" not in result.output


# ------------------------------------------------------------------------------- repr, exact

WRAPPERS = {"0-d tensor": lambda v: torch.tensor(v, dtype=torch.float64), "numpy": np.float64}


def assert_exact_repr(method, forbidden=("tensor(", "np.", "array(")):
    shown = repr(method)
    assert not any(f in shown for f in forbidden), shown
    again = eval(shown, vars(dm))
    assert repr(again) == shown


@pytest.mark.parametrize("wrap", list(WRAPPERS))
@pytest.mark.parametrize(("kind", "name", "option"), PER_TASK_LISTS + PER_TASK_MAPS)
def test_numbers_inside_per_task_options_are_shown_as_python_numbers(kind, name, option, wrap):
    values = [WRAPPERS[wrap](v) for v in (0.123456, 0.5, 0.75)]
    given = dict(zip(TASKS, values)) if (kind, name, option) in PER_TASK_MAPS else values
    method = make(method_of(kind, name), **{option: given})
    assert_exact_repr(method)
    assert "0.123456" in repr(method)  # not rounded to 4 decimals


@pytest.mark.parametrize(("kind", "name", "option"), PER_TASK_LISTS)
def test_a_per_task_list_may_be_a_numpy_array_as_it_may_be_a_1d_tensor(kind, name, option):
    """Taken, shown as a list, and giving the step the list gives."""
    values = [0.25, 0.5]
    built = make(method_of(kind, name), **{option: np.array(values)})
    assert f"{option}={values!r}" in repr(built)
    assert_exact_repr(built)
    listed = make(method_of(kind, name), **{option: values})
    step = [grads_after_backward(*((None, m) if isinstance(m, dm.Aggregation) else (m, None)), ("a", "b"),
                                 batch(0, names=("a", "b")), None)[0] for m in (built, listed)]
    assert_same_gradients(*step)


@pytest.mark.parametrize(("kind", "name", "option"), FLOATS)
def test_a_fraction_for_a_float_option_has_a_repr_that_evaluates(kind, name, option):
    import fractions

    default = method_of(kind, name).option_defaults()[option]
    if not isinstance(default, float) or not 0 < default < 1:
        pytest.skip("a fraction of (0, 1) is not in every option's range")
    built = make(method_of(kind, name), **{option: fractions.Fraction(1, 3)})
    assert "Fraction" not in repr(built)
    assert_exact_repr(built)


@pytest.mark.parametrize("wrap", list(WRAPPERS))
@pytest.mark.parametrize(("kind", "name", "option"), FLOATS)
def test_a_float_option_given_as_numpy_or_tensor_has_an_exact_repr(kind, name, option, wrap):
    default = method_of(kind, name).option_defaults()[option]
    if not isinstance(default, float):
        pytest.skip("no default number to wrap")
    assert_exact_repr(make(method_of(kind, name), **{option: WRAPPERS[wrap](default)}))


@pytest.mark.parametrize(
    ("kind", "name"), [("weighting", n) for n in WEIGHTINGS] + [("aggregation", n) for n in AGGREGATIONS]
)
def test_one_method_object_for_two_task_sets_is_refused_even_after_the_first_run_is_gone(kind, name):
    """Its state (λ, histories, tracked gradients, smoothed weights) is per task: a second
    MultiTask with other tasks cannot take it over, as a weighting cannot."""
    method = build(kind, name, ("a", "b"))
    first = net(0, names=("a", "b"))
    dm.MultiTask(first, dm.Tasks(dict.fromkeys(("a", "b"), masked_mse)), torch.optim.SGD(first.parameters(), lr=0.1),
                 **{kind: method})
    second = net(1)
    bound = rf"{type(method).__name__} is bound to tasks \['a', 'b'\], not \['a', 'b', 'c'\]"
    with pytest.raises(ValueError, match=bound):
        dm.MultiTask(second, dm.Tasks(dict.fromkeys(TASKS, masked_mse)), torch.optim.SGD(second.parameters(), lr=0.1),
                     **{kind: method})


@pytest.mark.parametrize("inner", ["upgrad", "mgda"])
def test_a_composed_aggregation_is_bound_with_what_it_composes(inner):
    smoothed = dm.CRMOGM(build("aggregation", inner, ("a", "b")))
    smoothed.bind(("a", "b"))
    with pytest.raises(ValueError, match=r"is bound to tasks \['a', 'b'\], not \['a', 'b', 'c'\]"):
        dm.CRMOGM(smoothed.aggregation).bind(TASKS)


INTS = options_annotated(lambda a: alternatives(a) - {"None"} == {"int"})


@pytest.mark.parametrize(("kind", "name", "option"), INTS)
def test_an_int_option_given_a_tensor_says_to_write_a_python_int(kind, name, option):
    """Int options are counts and seeds used as Python ints: a 0-d integer tensor is refused
    with the corrected call (NumPy integers, which are ints to Python's number tower, pass)."""
    method, cls = method_of(kind, name), method_of(kind, name).factory.__name__
    default = inspect.signature(method.factory.__init__).parameters[option].default
    value = default if isinstance(default, int) else 1
    expected = rf"{cls}'s option {option} must be an integer.*write {cls}\({option}={value}\)"
    with pytest.raises(TypeError, match=expected):
        make(method, **{option: torch.tensor(value)})
    make(method, **{option: np.int64(value)})


def test_every_wrong_option_of_a_constructor_is_named_at_once():
    """One error lists every wrong option (a ``TypeError`` and a ``ValueError``, as each
    problem is one or the other); a single wrong option keeps its own exception."""
    with pytest.raises(dm.OptionsError) as caught:
        dm.UPGrad(pref=[1.0, -1.0], reg_eps=float("nan"), max_iters="3")
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)
    assert len(caught.value.problems) == 3
    for text in ("option pref must hold numbers >= 0", "option reg_eps must be", "option max_iters must be"):
        assert text in str(caught.value)
    with pytest.raises(ValueError) as single:
        dm.UPGrad(reg_eps=-1.0)
    assert type(single.value) is ValueError
    with pytest.raises(ValueError) as bound:
        dm.STCH(preference={"a": 1.0, "z": 1.0}, ideal={"y": 0.0}).bind(TASKS)
    assert "preference names task(s) ['z']" in str(bound.value) and "ideal names task(s) ['y']" in str(bound.value)
    # MultiTask names the weighting's and the aggregation's misfits together, not the first only
    model = net()
    with pytest.raises(dm.OptionsError) as both:
        dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), torch.optim.SGD(model.parameters(), lr=0.1),
                     weighting=dm.STCH(ideal={"y": 0.0}), aggregation=dm.CRMOGM(dm.UPGrad(pref=[1.0, 2.0])))
    assert "ideal names task(s) ['y']" in str(both.value) and "UPGrad's option pref has 2 value(s)" in str(both.value)


def test_an_option_a_method_does_not_take_is_named_with_the_class_and_its_options():
    with pytest.raises(TypeError, match=r"ConFIG: got an unexpected keyword argument 'reg_eps'; its options are "
                                        r"\['pref'\]"):
        dm.ConFIG(reg_eps=1.0)
    # UPGrad's __init__ is its base's: the message names the class called, not DualConeAggregation
    with pytest.raises(TypeError, match=r"^UPGrad: too many positional arguments; its options are \['pref', "):
        dm.UPGrad([1.0], 0.1, 10, 4)
    with pytest.raises(TypeError, match=r"GLS: got an unexpected keyword argument 'mu'; it takes no options: GLS\(\)"):
        dm.GLS(mu=1.0)


@pytest.mark.parametrize("aggregation", [lambda: dm.UPGrad(pref=[1e30] * 3), lambda: dm.DualProj(pref=[1e30] * 3),
                                         lambda: dm.AlignedMTL(pref=[1e30] * 3)])
def test_an_update_that_overflows_the_dtype_is_named_as_such_and_the_step_undone(aggregation):
    """Each task's gradient is finite but 1e30 × 1e10 is beyond float32: the error says the
    combination overflowed (not that the tasks' values are NaN), and nothing is changed
    (Aligned-MTL's least-squares fit of the infinite update crashed LAPACK before)."""
    model = net(0, torch.float32)
    before = copy.deepcopy(model.state_dict())
    tasks = dm.Tasks({"a": lambda p, y: 1e10 * F.mse_loss(p, y), "b": F.mse_loss, "c": F.mse_loss})
    mtl = dm.MultiTask(model, tasks, torch.optim.SGD(model.parameters(), lr=0.01), aggregation=aggregation())
    with pytest.raises(dm.NonFiniteLossError, match=r"non-finite combined gradient in step 1 \(1-based\), in the "
                                                    r"\w+ aggregation pass; .*combination overflowed float32"):
        mtl.step(batch(0, dtype=torch.float32))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
