"""The functional look-ahead equals a real ``optimizer.step()``; its Jacobian is diagonal."""

import copy

import pytest
import torch
from torch import nn

from dynamtl import LookAhead

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=1e-2),
    "sgd-nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sgd-maximize": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5, maximize=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    "adam-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.9), amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _groups(model: nn.Module) -> list[dict]:
    """Two parameter groups with different learning rates (the second at half the default)."""
    return [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr_scale": 0.5}]


def _make(name: str, model: nn.Module) -> torch.optim.Optimizer:
    opt = OPTIMIZERS[name](_groups(model))
    for group in opt.param_groups:
        group["lr"] *= group.pop("lr_scale", 1.0)
    return opt


def _gradient(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    loss = (model(x) ** 2).mean()
    names, params = zip(*model.named_parameters())
    return dict(zip(names, torch.autograd.grad(loss, params)))


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("warm_steps", [0, 3])
def test_lookahead_equals_a_real_step(name: str, warm_steps: int) -> None:
    model = _model()
    opt = _make(name, model)
    for seed in range(warm_steps):  # fill momentum buffers / Adam moments
        opt.zero_grad()
        for p, g in zip(model.parameters(), _gradient(model, 100 + seed).values()):
            p.grad = g
        opt.step()
    grads = _gradient(model, 7)
    state_before = copy.deepcopy(opt.state_dict())
    predicted = LookAhead(opt, dict(model.named_parameters())).step(grads)

    twin = copy.deepcopy(model)
    twin_opt = _make(name, twin)
    twin_opt.load_state_dict(copy.deepcopy(state_before))
    for p, g in zip(twin.parameters(), grads.values()):
        p.grad = g.clone()
    twin_opt.step()

    for (n, p), before in zip(twin.named_parameters(), model.parameters()):
        torch.testing.assert_close(predicted[n], p.detach(), rtol=0, atol=1e-10)
        assert not torch.equal(p, before), "the real step must move every parameter"
    # the look-ahead changed neither the parameters nor the optimizer state
    torch.testing.assert_close(opt.state_dict(), state_before)


def test_parameters_without_gradient_or_optimizer_stay() -> None:
    model = _model()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)  # model[2] not optimised
    grads = _gradient(model, 0)
    grads["0.bias"] = None
    moved = LookAhead(opt, dict(model.named_parameters())).step(grads)
    assert torch.equal(moved["0.bias"], model[0].bias)
    assert torch.equal(moved["2.weight"], model[2].weight)
    torch.testing.assert_close(moved["0.weight"], model[0].weight - 0.1 * grads["0.weight"])


@pytest.mark.parametrize("name", ["sgd-momentum-wd", "sgd-nesterov", "adam", "adam-amsgrad", "adamw"])
def test_jacobian_diagonal_is_the_full_jacobian(name: str) -> None:
    """The update is elementwise: jacrev of θ'(g) is diagonal and its diagonal is ours."""
    model = _model()
    opt = _make(name, model)
    opt.zero_grad()
    for p, g in zip(model.parameters(), _gradient(model, 1).values()):
        p.grad = g
    opt.step()
    lookahead = LookAhead(opt, dict(model.named_parameters()))
    grads = _gradient(model, 2)
    grads["2.bias"] = torch.zeros_like(grads["2.bias"])  # a zero gradient must not give nan
    diagonal = lookahead.jacobian_diagonal(grads)
    for name_, g in grads.items():
        full = torch.func.jacrev(lambda t, n=name_: lookahead.step({**grads, n: t})[n])(g)
        full = full.reshape(g.numel(), g.numel())
        torch.testing.assert_close(torch.diagonal(full), diagonal[name_].reshape(-1), rtol=1e-10, atol=1e-12)
        off_diagonal = full - torch.diag(torch.diagonal(full))
        assert float(off_diagonal.abs().max()) == 0.0
        assert torch.isfinite(diagonal[name_]).all()


def test_unsupported_optimizer_names_the_supported_ones() -> None:
    model = _model()
    with pytest.raises(TypeError, match=r"RMSprop.*SGD.*Adam.*AdamW"):
        LookAhead(torch.optim.RMSprop(model.parameters()), dict(model.named_parameters()))
