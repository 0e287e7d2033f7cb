"""DB-MTL against its definition: λᵢ = (max‖ĝ‖/‖ĝᵢ‖)/(Lᵢ+ε) with ĝ the moving average of the
shared gradients of the log-losses, computed by hand on a tiny float64 model."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm

TASKS = ("a", "b")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 4)
        self.heads = nn.ModuleDict({t: nn.Linear(4, 1) for t in TASKS})

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    a, b = torch.randn(8, generator=g, dtype=torch.float64), 30 * torch.randn(8, generator=g, dtype=torch.float64)
    return x, {"a": a, "b": b}


def test_weights_follow_the_definition_over_steps():
    torch.manual_seed(0)
    model = Net().double()
    twin = copy.deepcopy(model)
    weighting = dm.DBMTL(beta=0.9, sigma=0.5)
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), None, weighting=weighting)
    average = None
    for t in range(1, 4):
        x, y = _batch(t)
        info = mtl.backward((x, y))
        out = twin(x)
        losses = torch.stack([F.mse_loss(out[k], y[k]) for k in TASKS])
        trunk = list(twin.trunk.parameters())
        grads = [torch.autograd.grad(torch.log(losses[i] + 1e-8), trunk, retain_graph=True) for i in range(2)]
        rows = torch.stack([torch.cat([g.reshape(-1) for g in task]) for task in grads])
        rate = 0.9 / t**0.5
        average = (1 - rate) * rows if average is None else rate * average + (1 - rate) * rows
        norms = average.norm(dim=1)
        expected = (norms.max() / norms) / (losses.detach() + 1e-8)
        torch.testing.assert_close(info.weights, expected, rtol=1e-10, atol=0)
        for p in model.parameters():
            p.grad = None


def test_the_state_is_saved_and_restored():
    torch.manual_seed(0)
    model = Net().double()
    weighting = dm.DBMTL()
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), None, weighting=weighting)
    mtl.backward(_batch(0))
    state = copy.deepcopy(weighting.state_dict())
    clone = dm.DBMTL().bind(TASKS)
    clone.load_state_dict(state)
    assert clone.steps == 1 and torch.equal(clone.average, weighting.average)


def test_bad_options_and_losses_are_refused():
    with pytest.raises(ValueError, match=r"DBMTL\'s option beta must be in \[0, 1\], got 1.5"):
        dm.DBMTL(beta=1.5)
    torch.manual_seed(0)
    model = Net().double()
    mtl = dm.MultiTask(model, dm.Tasks({"a": lambda p, y: F.mse_loss(p, y) - 10.0, "b": F.mse_loss}), None,
                       weighting=dm.DBMTL())
    with pytest.raises(ValueError, match=r"needs every loss > -epsilon; got \{'a': "):
        mtl.backward(_batch(0))


@pytest.mark.parametrize("scale", [1e-30, 1e-20])
def test_a_task_whose_loss_is_far_below_epsilon_is_balanced_in_float32_as_in_float64(scale):
    """Its log-loss gradient ∇L/(L + ε) is ~1e-22: the squared norm underflows float32, which
    read as a zero average (factor 1, λL ≈ 1e-22) instead of the float64 balance."""
    scaled = {}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        model = Net().to(dtype)
        tasks = dm.Tasks({"a": F.mse_loss, "b": lambda p, y: scale * F.mse_loss(p, y / 30)})
        mtl = dm.MultiTask(model, tasks, None, weighting=dm.DBMTL())
        x, y = _batch(1)
        info = mtl.backward((x.to(dtype), {k: v.to(dtype) for k, v in y.items()}))
        scaled[dtype] = (info.weights.double() * info.losses.double())
    torch.testing.assert_close(scaled[torch.float32], scaled[torch.float64], rtol=1e-4, atol=0)
