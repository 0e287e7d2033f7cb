"""MGDA-UB: min-norm weights from the gradients of the shared representation, one backward pass."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm

TASKS = ("a", "b", "c")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(3, 2), nn.Tanh())  # Z has 2 features per sample
        self.heads = nn.ModuleDict({t: nn.Linear(2, 1) for t in TASKS})

    def forward(self, x):
        z = self.trunk(x)
        return {t: head(z).squeeze(-1) for t, head in self.heads.items()}


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64)
    return x, {t: torch.randn(2, generator=g, dtype=torch.float64) for t in TASKS}


def test_upper_bound_weights_are_the_min_norm_point_of_representation_gradients() -> None:
    torch.manual_seed(0)
    model = Net().double()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lam = {"a": 1.0, "b": 0.5, "c": 2.0}
    mtl = dm.MultiTask(
        model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), opt,
        weighting=dm.Static(lam), aggregation=dm.MGDA(upper_bound=True), representation="trunk",
    )
    x, y = _batch()
    mtl.backward((x, y))

    z = twin.trunk(x)
    losses = [F.mse_loss(twin.heads[t](z).squeeze(-1), y[t]) for t in TASKS]
    rows = torch.stack(
        [lam[t] * torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for t, loss in zip(TASKS, losses)]
    )
    # brute force over a fine grid of the simplex
    steps = 400
    best, best_alpha = float("inf"), None
    for i, j in itertools.product(range(steps + 1), repeat=2):
        if i + j <= steps:
            alpha = torch.tensor([i, j, steps - i - j], dtype=torch.float64) / steps
            norm = float((alpha @ rows).norm())
            if norm < best:
                best, best_alpha = norm, alpha
    sum(best_alpha[k] * lam[t] * losses[k] for k, t in enumerate(TASKS)).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-2, atol=1e-3)


def test_upper_bound_needs_the_representation_when_the_step_is_built() -> None:
    with pytest.raises(ValueError, match=r"MGDA needs the shared representation: MultiTask.*representation='NAME'"):
        dm.MultiTask(Net(), dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), aggregation=dm.MGDA(upper_bound=True))


def test_unknown_representation_module_lists_the_submodules() -> None:
    with pytest.raises(ValueError, match=r"no submodule 'body'.*'trunk'"):
        dm.MultiTask(Net(), dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), representation="body")
