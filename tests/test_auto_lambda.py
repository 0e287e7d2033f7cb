"""Auto-Lambda's hypergradient against independent computations, and its behaviour."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import dynamtl as dm

TASKS = ("a", "b", "c")


class Net(nn.Module):
    """A tiny shared trunk with three regression heads (optionally with dropout)."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Dropout(dropout))
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def _batch(seed: int, n: int = 16) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, {t: torch.randn(n, generator=g, dtype=torch.float64) for t in TASKS}


def _tasks() -> dm.Tasks:
    return dm.Tasks(dict.fromkeys(TASKS, F.mse_loss))


OPTIMIZERS = {
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
}


def _setup(optimizer: str, dropout: float = 0.0, warm: int = 2):
    """A float64 model and optimizer whose state is warmed by ``warm`` plain steps."""
    torch.manual_seed(0)
    model = Net(dropout).double()
    opt = OPTIMIZERS[optimizer](model.parameters())
    warmup = dm.MultiTask(model, _tasks(), opt)
    for s in range(warm):
        warmup.step(_batch(100 + s))
    return model, opt


def _weighted_loss(model: nn.Module, batch, lam: torch.Tensor, params=None) -> torch.Tensor:
    x, y = batch
    out = model(x) if params is None else functional_call(model, params, (x,))
    return sum(lam[i] * F.mse_loss(out[t], y[t]) for i, t in enumerate(TASKS))


def _meta_loss(model, meta, primary, params=None) -> torch.Tensor:
    x, y = meta
    out = model(x) if params is None else functional_call(model, params, (x,))
    return sum(F.mse_loss(out[t], y[t]) for t in primary)


def _reference_by_real_steps(model, opt, batch, meta, lam, primary, h=1e-5) -> torch.Tensor:
    """∂/∂λ L_val(θ'(λ)) by central differences in λ, θ' from a real optimizer.step() on copies."""

    def value(lam_: torch.Tensor) -> float:
        twin = copy.deepcopy(model)
        twin_opt = type(opt)(twin.parameters(), **opt.defaults)
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        twin_opt.zero_grad()
        _weighted_loss(twin, batch, lam_).backward()
        twin_opt.step()
        with torch.no_grad():
            return float(_meta_loss(twin, meta, primary))

    grad = torch.zeros(len(TASKS), dtype=torch.float64)
    for i in range(len(TASKS)):
        e = torch.zeros(len(TASKS), dtype=torch.float64)
        e[i] = h
        grad[i] = (value(lam + e) - value(lam - e)) / (2 * h)
    return grad


def _hypergradient_of_one_step(model, opt, weighting, batch, meta) -> torch.Tensor:
    mt = dm.MultiTask(model, _tasks(), opt, weighting=weighting)
    mt.step(batch, meta_batch=meta)
    return weighting.last_hypergradient


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("primary", [None, ["a"]])
@pytest.mark.parametrize(
    "options,tolerance",
    [
        ({"hypergradient": "finite_difference"}, 1e-3),
        ({"hypergradient": "finite_difference", "difference": "forward"}, 1e-1),  # O(ε) error
        ({"hypergradient": "finite_difference", "difference": "forward", "epsilon": 1e-5}, 1e-3),
        ({"hypergradient": "exact"}, 1e-8),
    ],
)
def test_hypergradient_matches_real_unrolled_step(optimizer, primary, options, tolerance) -> None:
    model, opt = _setup(optimizer)
    batch, meta = _batch(1), _batch(2)
    lam = torch.full((3,), 0.1, dtype=torch.float64)
    reference = _reference_by_real_steps(model, opt, batch, meta, lam, primary or TASKS)
    ours = _hypergradient_of_one_step(model, opt, dm.AutoLambda(primary, **options), batch, meta)
    relative = float((ours - reference).norm() / reference.norm())
    assert relative < tolerance, (ours, reference)


def test_exact_derivative_through_hand_unrolled_sgd_step() -> None:
    """The issue's definition: autograd of L_val(θ − lr·(μ·b + ∇θΣλᵢLᵢ + wd·θ)) in λ."""
    model, opt = _setup("sgd-momentum-wd")
    batch, meta = _batch(3), _batch(4)
    lam = torch.full((3,), 0.1, dtype=torch.float64, requires_grad=True)
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(_weighted_loss(model, batch, lam), params, create_graph=True)
    lr, momentum, wd = 0.1, 0.9, 1e-2
    moved = {}
    for n, p, g in zip(names, params, grads):
        buf = opt.state[p]["momentum_buffer"]
        moved[n] = p.detach() - lr * (momentum * buf + (g + wd * p.detach()))
    reference = torch.autograd.grad(_meta_loss(model, meta, TASKS, moved), lam)[0]
    for mode, tolerance in [("finite_difference", 1e-3), ("exact", 1e-8)]:
        twin = copy.deepcopy(model)
        twin_opt = torch.optim.SGD(twin.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        ours = _hypergradient_of_one_step(twin, twin_opt, dm.AutoLambda(hypergradient=mode), batch, meta)
        assert float((ours - reference).norm() / reference.norm()) < tolerance


def test_finite_difference_replays_dropout_masks() -> None:
    """With dropout, the perturbed passes must see the training pass's masks: FD ≈ exact."""
    results = {}
    for mode in ("finite_difference", "exact"):
        model, opt = _setup("sgd-momentum-wd", dropout=0.3)
        torch.manual_seed(5)
        results[mode] = _hypergradient_of_one_step(model, opt, dm.AutoLambda(hypergradient=mode), _batch(1), _batch(2))
    relative = (results["finite_difference"] - results["exact"]).norm() / results["exact"].norm()
    assert float(relative) < 1e-3


def test_lambda_update_and_real_step_use_the_new_lambda() -> None:
    model, opt = _setup("sgd-momentum-wd")
    twin = copy.deepcopy(model)
    weighting = dm.AutoLambda(lr=1e-2)
    mt = dm.MultiTask(model, _tasks(), opt, weighting=weighting)
    batch, meta = _batch(1), _batch(2)
    opt.zero_grad()
    mt.backward(batch, meta_batch=meta)
    # Adam's first step moves each λᵢ by lr against the sign of its hypergradient
    expected = 0.1 - 1e-2 * torch.sign(weighting.last_hypergradient)
    torch.testing.assert_close(weighting.lambdas.detach(), expected, rtol=1e-4, atol=0)
    # the real gradient is that of Σ λ'ᵢ Lᵢ with the updated λ'
    _weighted_loss(twin, batch, weighting.lambdas.detach()).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("difference,tolerance", [("central", 1e-3), ("forward", 1e-1)])
def test_lagged_variant_uses_the_real_step_as_virtual_step(optimizer, difference, tolerance) -> None:
    """At step t+1, λ moves by ∂/∂λ L_val(step(θ_t, Σλ∇L(batch_t)); meta_{t+1})."""
    model, opt = _setup(optimizer)
    model0, opt_state0 = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    weighting = dm.AutoLambda(order="lagged", difference=difference)
    mt = dm.MultiTask(model, _tasks(), opt, weighting=weighting)
    batch0, batch1, meta1 = _batch(1), _batch(3), _batch(4)
    mt.step(batch0, meta_batch=_batch(2))
    assert weighting.last_hypergradient is None  # nothing to learn from yet
    mt.step(batch1, meta_batch=meta1)
    opt0 = OPTIMIZERS[optimizer](model0.parameters())
    opt0.load_state_dict(opt_state0)
    lam = torch.full((3,), 0.1, dtype=torch.float64)
    reference = _reference_by_real_steps(model0, opt0, batch0, meta1, lam, TASKS)
    relative = (weighting.last_hypergradient - reference).norm() / reference.norm()
    assert float(relative) < tolerance


def test_interval_and_nonnegativity() -> None:
    model, opt = _setup("sgd-momentum-wd")
    weighting = dm.AutoLambda(interval=3, nonnegative=True, lr=0.5)
    mt = dm.MultiTask(model, _tasks(), opt, weighting=weighting)
    history = []
    for s in range(7):
        mt.step(_batch(10 + s), meta_batch=_batch(50 + s))
        history.append(weighting.lambdas.detach().clone())
    changed = [not torch.equal(history[i], history[i - 1]) for i in range(1, 7)]
    assert changed == [False, False, True, False, False, True]  # updates at steps 0, 3, 6
    assert float(torch.stack(history).min()) >= 0.0
    assert float(torch.stack(history).min()) == 0.0  # lr 0.5 from 0.1 drives some λ to the bound


def test_batchnorm_statistics_see_only_the_real_forward() -> None:
    def run(weighting):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh())
        net = Net().double()
        net.trunk = model.double()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        dm.MultiTask(net, _tasks(), opt, weighting=weighting).backward(_batch(1), meta_batch=_batch(2))
        return net.trunk[1]

    plain, auto = run(dm.Equal()), run(dm.AutoLambda())
    assert int(auto.num_batches_tracked) == 1
    torch.testing.assert_close(auto.running_mean, plain.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(auto.running_var, plain.running_var, rtol=0, atol=0)


def test_state_dict_round_trip_continues_identically() -> None:
    def fresh():
        model, opt = _setup("adam")
        return model, opt, dm.MultiTask(model, _tasks(), opt, weighting=dm.AutoLambda(lr=1e-2, order="lagged"))

    model, opt, mt = fresh()
    for s in range(2):
        mt.step(_batch(s), meta_batch=_batch(20 + s))
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), mt.state_dict()))
    for s in range(2, 4):
        mt.step(_batch(s), meta_batch=_batch(20 + s))
    model2, opt2, mt2 = fresh()
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    mt2.load_state_dict(saved[2])
    for s in range(2, 4):
        mt2.step(_batch(s), meta_batch=_batch(20 + s))
    torch.testing.assert_close(mt2.weighting.lambdas, mt.weighting.lambdas, rtol=0, atol=0)
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_noise_auxiliary_task_gets_a_lower_lambda() -> None:
    """The paper's robustness finding on real data: an auxiliary task of pure noise labels is
    down-weighted below the primary task (sklearn's digits, auxiliary mode)."""
    datasets = pytest.importorskip("sklearn.datasets", reason="needs scikit-learn (pip install 'dynamtl[dev]')")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    noise = torch.randint(0, 10, (len(y),), generator=torch.Generator().manual_seed(0))

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
            self.digit, self.noise = nn.Linear(64, 10), nn.Linear(64, 10)

        def forward(self, inputs):
            h = self.trunk(inputs)
            return {"digit": self.digit(h), "noise": self.noise(h)}

    torch.manual_seed(0)
    model = TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weighting = dm.AutoLambda(primary="digit", lr=3e-3)
    mt = dm.MultiTask(model, dm.Tasks({"digit": F.cross_entropy, "noise": F.cross_entropy}), opt, weighting=weighting)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        order, meta_order = torch.randperm(1400, generator=g), 1400 + torch.randperm(397, generator=g)
        for i in range(0, 1400, 64):
            idx, m = order[i : i + 64], meta_order[(i // 64 * 32) % 397 :][:32]
            mt.step(
                (x[idx], {"digit": y[idx], "noise": noise[idx]}), meta_batch=(x[m], {"digit": y[m], "noise": noise[m]})
            )
    lam = dict(zip(("digit", "noise"), weighting.lambdas.tolist()))
    assert lam["digit"] > 0.1 > lam["noise"]
    assert lam["digit"] - lam["noise"] > 0.1, lam
