"""HydaLearn's gains against brute force (copy, step with one task's gradient, re-evaluate)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm

TASKS = ("main", "aux1", "aux2")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def _batch(seed: int, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = {t: torch.randn(n, generator=g, dtype=torch.float64) for t in TASKS}
    y["aux1"] = y["main"] + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)  # related to main
    return x, y


def _tasks() -> dm.Tasks:
    return dm.Tasks(dict.fromkeys(TASKS, F.mse_loss))


def _model_and_optimizer():
    torch.manual_seed(0)
    model = Net().double()
    groups = [{"params": model.trunk.parameters(), "lr": 0.3}, {"params": model.heads.parameters()}]
    return model, torch.optim.SGD(groups, lr=0.1, momentum=0.9)


def _main_loss(model, batch) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x)["main"], y["main"])


def _brute_force_gains(model, batch, gain_batch) -> torch.Tensor:
    """δₖ = L_main(θ) − L_main(θ − η∇Lₖ): a copy per task, a plain SGD step with each group's lr."""
    x, y = batch
    with torch.no_grad():
        before = float(_main_loss(copy.deepcopy(model), gain_batch))
    gains = []
    for task in TASKS:
        twin = copy.deepcopy(model)
        opt = torch.optim.SGD(
            [{"params": twin.trunk.parameters(), "lr": 0.3}, {"params": twin.heads.parameters(), "lr": 0.1}]
        )
        F.mse_loss(twin(x)[task], y[task]).backward()
        opt.step()
        with torch.no_grad():
            gains.append(before - float(_main_loss(twin, gain_batch)))
    return torch.tensor(gains, dtype=torch.float64)


def _brute_force_first_order(model, batch, gain_batch) -> torch.Tensor:
    x, y = batch
    lrs = [0.3] * len(list(model.trunk.parameters())) + [0.1] * len(list(model.heads.parameters()))
    main_twin = copy.deepcopy(model)
    main = torch.autograd.grad(_main_loss(main_twin, gain_batch), list(main_twin.parameters()), allow_unused=True)
    twin = copy.deepcopy(model)  # BN statistics of the main-gradient pass must not leak
    gains = []
    for task in TASKS:
        g = torch.autograd.grad(F.mse_loss(twin(x)[task], y[task]), list(twin.parameters()), allow_unused=True)
        gains.append(sum(lr * (a * b).sum() for lr, a, b in zip(lrs, main, g) if a is not None and b is not None))
    return torch.stack(gains)


@pytest.mark.parametrize("gain", ["lookahead", "first_order"])
@pytest.mark.parametrize("gain_batch", ["current", "meta"])
def test_gains_match_brute_force(gain, gain_batch) -> None:
    model, opt = _model_and_optimizer()
    reference_model = copy.deepcopy(model)
    batch, meta = _batch(1), _batch(2)
    weighting = dm.HydaLearn("main", gain=gain, gain_batch=gain_batch)
    dm.MultiTask(model, _tasks(), opt, weighting=weighting).step(batch, meta_batch=meta)
    measured_on = batch if gain_batch == "current" else meta
    brute = _brute_force_gains if gain == "lookahead" else _brute_force_first_order
    reference = brute(reference_model, batch, measured_on)
    torch.testing.assert_close(weighting.last_gains, reference, rtol=1e-9, atol=1e-12)
    assert float(reference[0]) > 0  # the main task's own step helps it


def test_first_order_gain_is_the_limit_of_the_lookahead_gain() -> None:
    model, _ = _model_and_optimizer()
    batch = _batch(3)
    gains = {}
    for gain in ("lookahead", "first_order"):
        weighting = dm.HydaLearn("main", gain=gain, step_size=1e-5)
        twin = copy.deepcopy(model)
        opt = torch.optim.SGD(twin.parameters(), lr=0.1)
        dm.MultiTask(twin, _tasks(), opt, weighting=weighting).backward(batch)
        gains[gain] = weighting.last_gains
    torch.testing.assert_close(gains["lookahead"], gains["first_order"], rtol=1e-3, atol=1e-12)


def test_gradient_is_the_gain_weighted_sum_of_task_gradients() -> None:
    model, opt = _model_and_optimizer()
    twin = copy.deepcopy(model)
    batch = _batch(4)
    weighting = dm.HydaLearn("main")
    opt.zero_grad()
    info = dm.MultiTask(model, _tasks(), opt, weighting=weighting).backward(batch)
    x, y = batch
    out = twin(x)
    sum(w * F.mse_loss(out[t], y[t]) for w, t in zip(info.weights, TASKS)).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
    # BatchNorm statistics saw one forward pass, not 1 + T
    assert int(model.trunk[1].num_batches_tracked) == 1


def _weights(gains, **options) -> torch.Tensor:
    weighting = dm.HydaLearn("main", step_size=0.1, **options).bind(TASKS)
    return weighting._weights_from_gains(torch.tensor(gains, dtype=torch.float64))


def test_weights_follow_gains_and_clip_negative_ones() -> None:
    torch.testing.assert_close(_weights([2.0, 1.0, -3.0]), torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        _weights([2.0, 1.0, -3.0], normalize="main"), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    )
    expected = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    torch.testing.assert_close(_weights([2.0, 1.0, 1.0], total=1.0), expected)


def test_floor_keeps_every_task_alive() -> None:
    w = _weights([3.0, 1.0, -1.0], floor=0.1)
    shares = torch.tensor([0.75, 0.25, 0.1], dtype=torch.float64)
    torch.testing.assert_close(w, 3 * shares / shares.sum())


def test_no_positive_gain_falls_back_to_equal_weights() -> None:
    weighting = dm.HydaLearn("main", step_size=0.1).bind(TASKS)
    w = weighting._weights_from_gains(torch.tensor([-1.0, 0.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(w, torch.ones(3, dtype=torch.float64))
    assert weighting.fallbacks == 1


def test_several_main_tasks_sum_their_losses() -> None:
    model, opt = _model_and_optimizer()
    reference_model = copy.deepcopy(model)
    batch = _batch(5)
    weighting = dm.HydaLearn(["main", "aux1"], gain="first_order")
    dm.MultiTask(model, _tasks(), opt, weighting=weighting).backward(batch)
    x, y = batch
    params = list(reference_model.parameters())
    lrs = [0.3] * 4 + [0.1] * 6
    out = reference_model(x)
    grads = {
        t: torch.autograd.grad(F.mse_loss(out[t], y[t]), params, retain_graph=True, allow_unused=True) for t in TASKS
    }
    main = [
        a + b if a is not None and b is not None else (a if b is None else b)
        for a, b in zip(grads["main"], grads["aux1"])
    ]
    expected = [
        sum(lr * (m * g).sum() for lr, m, g in zip(lrs, main, grads[t]) if m is not None and g is not None)
        for t in TASKS
    ]
    torch.testing.assert_close(weighting.last_gains, torch.stack(expected), rtol=1e-10, atol=1e-12)
