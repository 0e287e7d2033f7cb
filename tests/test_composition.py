"""Every weighting composes with every aggregation, and the combination means what the docs say."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm
from dynamtl.aggregation.base import shared_parameters

TASKS = ("main", "aux")

WEIGHTINGS = {
    "equal": lambda: dm.Equal(),
    "static": lambda: dm.Static({"main": 1.0, "aux": 0.5}),
    "uncertainty": lambda: dm.Uncertainty(),
    "dwa": lambda: dm.DWA(),
    "rlw": lambda: dm.RLW(seed=1),
    "auto-lambda": lambda: dm.AutoLambda(primary="main"),
    "auto-lambda-lagged": lambda: dm.AutoLambda(order="lagged"),
    "hydalearn": lambda: dm.HydaLearn("main"),
    "hydalearn-first-order": lambda: dm.HydaLearn("main", gain="first_order"),
    "gradnorm": lambda: dm.GradNorm(),
    "famo": lambda: dm.FAMO(),
    "gcs": lambda: dm.GCS("main"),
    "ol-aux": lambda: dm.OLAux("main"),
    "stch": lambda: dm.STCH(mu=0.5),
    "gls": lambda: dm.GLS(),
    "imtl-l": lambda: dm.IMTLL(),
    "db-mtl": lambda: dm.DBMTL(),
    "excess-mtl": lambda: dm.ExcessMTL(),
}
AGGREGATIONS = {
    "sum": dm.Sum,
    "pcgrad": dm.PCGrad,
    "graddrop": dm.GradDrop,
    "cagrad": dm.CAGrad,
    "mgda": dm.MGDA,
    "imtl-g": dm.IMTLG,
    "nash-mtl": dm.NashMTL,
    "aligned-mtl": dm.AlignedMTL,
    "gradvac": dm.GradVac,
    "upgrad": dm.UPGrad,
    "dualproj": dm.DualProj,
    "config": dm.ConFIG,
    "fairgrad": dm.FairGrad,
    "cr-mogm": dm.CRMOGM,
    "moco": dm.MoCo,
    "sdmgrad": dm.SDMGrad,
    "modo": dm.MoDo,
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in TASKS})

    def forward(self, x):
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    return x, {t: torch.randn(12, generator=g, dtype=torch.float64) for t in TASKS}


def _mtl(weighting, aggregation):
    torch.manual_seed(0)
    model = Net().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tasks = dm.Tasks(dict.fromkeys(TASKS, F.mse_loss))
    return model, opt, dm.MultiTask(model, tasks, opt, weighting=weighting, aggregation=aggregation)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_every_pair_trains_with_finite_gradients(weighting, aggregation) -> None:
    model, opt, mtl = _mtl(WEIGHTINGS[weighting](), AGGREGATIONS[aggregation]())
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        opt.zero_grad()
        extra = [_batch(200 + 10 * step + k) for k in range(mtl.aggregation.batches_per_step - 1)]
        info = mtl.backward(_batch(step), meta_batch=_batch(100 + step), extra_batches=extra)
        assert torch.isfinite(info.weights).all()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
        mtl.end_epoch()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_equal_with_sum_is_a_plain_backward_of_the_summed_loss() -> None:
    model, _, mtl = _mtl(dm.Equal(), dm.Sum())
    twin = copy.deepcopy(model)
    x, y = _batch(0)
    mtl.backward((x, y))
    out = twin(x)
    sum(F.mse_loss(out[t], y[t]) for t in TASKS).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "aggregation", ["pcgrad", "cagrad", "mgda", "imtl-g", "upgrad", "dualproj", "config", "fairgrad"]
)
def test_aggregation_sees_the_weighted_task_gradients(aggregation) -> None:
    """Static(w) + X: the shared parameters get X.combine on rows wₖ∇Lₖ, each head wₖ∇Lₖ."""
    weights = {"main": 1.0, "aux": 0.25}
    model, _, mtl = _mtl(dm.Static(weights), AGGREGATIONS[aggregation]())
    twin = copy.deepcopy(model)
    x, y = _batch(1)
    mtl.backward((x, y))
    out = twin(x)
    names, params = zip(*twin.named_parameters())
    grads = [
        dict(zip(names, torch.autograd.grad(weighted, params, retain_graph=True, allow_unused=True)))
        for weighted in (weights[t] * F.mse_loss(out[t], y[t]) for t in TASKS)
    ]
    shared = shared_parameters(grads)
    assert shared == [n for n in names if n.startswith("trunk")]
    rows = torch.stack([torch.cat([g[n].reshape(-1) for n in shared]) for g in grads])
    expected = AGGREGATIONS[aggregation]().double().combine(rows)
    ours = torch.cat([dict(model.named_parameters())[n].grad.reshape(-1) for n in shared])
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)
    for k, t in enumerate(TASKS):
        for n in names:
            if n.startswith(f"heads.{t}."):
                torch.testing.assert_close(dict(model.named_parameters())[n].grad, grads[k][n], rtol=1e-12, atol=1e-14)
