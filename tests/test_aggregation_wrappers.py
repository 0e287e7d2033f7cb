"""CR-MOGM (a moving average of an aggregation's weights) and OnRepresentation (any
aggregation on the gradients of the shared representation), against their definitions."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm
from dynamtl.aggregation._solvers import random_orders

F64 = torch.float64
TASKS = ("a", "b", "c")
WEIGHTS = {"a": 1.0, "b": 0.5, "c": 2.0}


def jacobian(seed, rows=3, cols=6):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("inner", [dm.MGDA, dm.UPGrad, dm.IMTLG, dm.PCGrad], ids=lambda c: c.__name__)
def test_cr_mogm_is_the_moving_average_of_the_inner_weights(inner):
    beta = 0.7
    smoothed, reference = dm.CRMOGM(inner(), beta=beta), inner()
    average = None
    for step in range(4):
        j = jacobian(step)
        current = reference.weights_and_update(j)[0]
        average = current if average is None else beta * average + (1 - beta) * current
        torch.testing.assert_close(smoothed.combine(j), average.to(j) @ j)
        torch.testing.assert_close(smoothed.average, average)


def test_cr_mogm_limits_state_and_bad_input():
    j0, j1 = jacobian(0), jacobian(1)
    plain = dm.CRMOGM(dm.MGDA(), beta=0.0)
    plain.combine(j0)
    torch.testing.assert_close(plain.combine(j1), dm.MGDA().combine(j1))
    frozen = dm.CRMOGM(beta=1.0)
    first = frozen.row_weights(j0)
    torch.testing.assert_close(frozen.row_weights(j1), first)
    saved = dm.CRMOGM(beta=0.5)
    saved.combine(j0)
    restored = dm.CRMOGM(beta=0.5)
    restored.load_state_dict(copy.deepcopy(saved.state_dict()))
    torch.testing.assert_close(restored.combine(j1), saved.combine(j1))
    with pytest.raises(ValueError, match=r"CRMOGM\'s option beta must be in \[0, 1\], got 2.0"):
        dm.CRMOGM(beta=2.0)
    with pytest.raises(TypeError, match="smooths the weights of a gradient aggregation"):
        dm.CRMOGM(dm.Sum())
    with pytest.raises(ValueError, match=r"CRMOGM\(aggregation=MGDA\(.*already averages its weights over steps"):
        dm.CRMOGM(dm.CRMOGM())  # as the name 'cr-mogm' is refused


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)) for t in TASKS})

    def forward(self, x):
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def _batch():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(10, 4, generator=g, dtype=F64)
    return x, {t: torch.randn(10, generator=g, dtype=F64) for t in TASKS}


def _run(aggregation):
    torch.manual_seed(0)
    model = Net().double()
    twin = copy.deepcopy(model)
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), None, weighting=dm.Static(WEIGHTS),
                       aggregation=aggregation, representation="trunk")
    x, y = _batch()
    info = mtl.backward((x, y))
    return model, twin, info, x, y


@pytest.mark.parametrize("inner", [dm.MGDA, dm.UPGrad, dm.ConFIG, dm.IMTLG, dm.CAGrad], ids=lambda c: c.__name__)
def test_on_representation_steps_along_the_weights_of_the_representation_rows(inner):
    model, twin, info, x, y = _run(dm.OnRepresentation(inner()))
    z = twin.trunk(x)
    losses = [WEIGHTS[t] * F.mse_loss(twin.heads[t](z).squeeze(-1), y[t]) for t in TASKS]
    rows = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses])
    alpha = inner().weights_and_update(rows)[0]
    torch.testing.assert_close(info.aggregation_weights, alpha)
    trunk = list(twin.trunk.parameters())
    expected = [sum(a * g for a, g in zip(alpha, grads))
                for grads in zip(*[torch.autograd.grad(loss, trunk, retain_graph=True) for loss in losses])]
    for p, e in zip(model.trunk.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)
    for t, loss in zip(TASKS, losses):  # every head gets λₖ∇Lₖ of its own task
        for p, e in zip(model.heads[t].parameters(), torch.autograd.grad(loss, list(twin.heads[t].parameters()),
                                                                          retain_graph=True)):
            torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-14)


def test_on_representation_of_mgda_is_mgda_ub_on_the_shared_parameters():
    model, *_ = _run(dm.OnRepresentation(dm.MGDA()))
    reference, *_ = _run(dm.MGDA(upper_bound=True))
    for p, q in zip(model.trunk.parameters(), reference.trunk.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12)


def test_on_representation_back_propagates_a_non_linear_update():
    """GradDrop's masked update on Z, pushed through the trunk by the chain rule."""
    model, twin, _, x, y = _run(dm.OnRepresentation(dm.GradDrop(seed=3)))
    z = twin.trunk(x)
    losses = [WEIGHTS[t] * F.mse_loss(twin.heads[t](z).squeeze(-1), y[t]) for t in TASKS]
    rows = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses])
    update = dm.GradDrop(seed=3).combine(rows)
    expected = torch.autograd.grad(z, list(twin.trunk.parameters()), grad_outputs=update.reshape(z.shape))
    for p, e in zip(model.trunk.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)


def test_on_representation_needs_a_representation_and_a_gradient_aggregation():
    with pytest.raises(TypeError, match="runs a gradient aggregation"):
        dm.OnRepresentation(dm.Sum())
    with pytest.raises(ValueError, match="needs the shared representation"):
        dm.MultiTask(Net().double(), dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), None,
                     aggregation=dm.OnRepresentation(dm.UPGrad()))


def test_gradvac_per_layer_applies_the_rule_to_each_layer_with_its_own_targets():
    torch.manual_seed(0)
    model = Net().double()
    twin = copy.deepcopy(model)
    aggregation = dm.GradVac(beta=0.5, seed=4, granularity="layer")
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), None, weighting=dm.Static(WEIGHTS),
                       aggregation=aggregation)
    x, y = _batch()
    info = mtl.backward((x, y))
    out = twin(x)
    losses = [WEIGHTS[t] * F.mse_loss(out[t], y[t]) for t in TASKS]
    layers = {"trunk.0": twin.trunk[0], "trunk.2": twin.trunk[2]}
    assert set(aggregation.layer_targets) == set(layers)
    reference = dm.GradVac(beta=0.5, seed=4)  # the same task orders: one draw per step
    orders = random_orders(reference.generator, 3)
    for name, layer in layers.items():
        params = list(layer.parameters())
        grads = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses]
        rows = torch.stack([torch.cat([g.reshape(-1) for g in task]) for task in grads])
        targets = [[0.0] * 3 for _ in range(3)]
        expected = torch.tensor(reference._vaccinate(rows, orders, targets), dtype=F64) @ rows
        got = torch.cat([p.grad.reshape(-1) for p in getattr(model.trunk, name.split(".")[1]).parameters()])
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(torch.tensor(aggregation.layer_targets[name]), torch.tensor(targets))
    assert info.aggregation_weights is not None
    state = copy.deepcopy(aggregation.state_dict())
    restored = dm.GradVac(granularity="layer")
    restored.load_state_dict(state)
    assert restored.layer_targets == aggregation.layer_targets


def test_gradvac_whole_model_is_unchanged_and_a_bad_granularity_refused():
    j = jacobian(2)
    torch.testing.assert_close(dm.GradVac(seed=1).combine(j), dm.GradVac(seed=1, granularity="layer").combine(j))
    with pytest.raises(ValueError, match="granularity must be one of"):
        dm.GradVac(granularity="tensor")


def test_cr_mogm_passes_the_layers_on_to_gradvac_per_layer():
    """CR-MOGM asked its inner aggregation for whole-Jacobian weights: GradVac(granularity="layer")
    silently ran its whole-model rule. With β = 0 the step must be GradVac per layer's own."""
    def step(aggregation):
        torch.manual_seed(0)
        model = Net().double()
        mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), None, weighting=dm.Static(WEIGHTS),
                           aggregation=aggregation)
        return mtl.backward(_batch()).aggregation_weights

    inner = dm.GradVac(beta=0.5, seed=4, granularity="layer")
    smoothed = step(dm.CRMOGM(inner, beta=0.0))
    assert set(inner.layer_targets) == {"trunk.0", "trunk.2"} and inner.targets is None
    alone = step(dm.GradVac(beta=0.5, seed=4, granularity="layer"))
    torch.testing.assert_close(smoothed, alone)
    assert not torch.allclose(alone, step(dm.GradVac(beta=0.5, seed=4)))  # the layers make a difference here
    refused = r"OnRepresentation cannot run CRMOGM\(aggregation=GradVac\(.*granularity='layer'\).*no layers"
    with pytest.raises(ValueError, match=refused):
        dm.OnRepresentation(dm.CRMOGM(dm.GradVac(granularity="layer")))
    dm.OnRepresentation(dm.CRMOGM(dm.GradVac()))  # the whole-model rule has a meaning on the representation


def _sqrt_at_zero(prediction, target):
    """A finite loss whose gradient is NaN: d√|u|/du at u = 0, through the task's head."""
    return F.mse_loss(prediction, target) + torch.sqrt((prediction - prediction.detach()).sum().abs())


@pytest.mark.parametrize("make", [lambda: dm.OnRepresentation(dm.UPGrad()),
                                  lambda: dm.OnRepresentation(dm.CRMOGM("upgrad")),
                                  lambda: dm.MGDA(upper_bound=True)], ids=["upgrad", "cr-mogm", "mgda-ub"])
def test_a_non_finite_gradient_under_a_representation_aggregation_names_its_task(make):
    """Their single backward pass used to free the graph, so tracing the non-finite combined
    gradient to its task failed with torch's 'backward through the graph a second time'."""
    torch.manual_seed(0)
    model = Net().double()
    start = copy.deepcopy(model.state_dict())
    losses = {"a": F.mse_loss, "b": F.mse_loss, "c": _sqrt_at_zero}
    mtl = dm.MultiTask(model, dm.Tasks(losses), torch.optim.SGD(model.parameters(), lr=0.1),
                       aggregation=make(), representation="trunk")
    with pytest.raises(dm.NonFiniteLossError, match=r"step 1 .*task\(s\) \{'c'"):
        mtl.step(_batch())
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, start[name], rtol=0, atol=0)
