"""A ``torch.compile``d model trains with every method as the eager model does.

The real forward pass runs the compiled module; the functional evaluations at other
parameters (look-aheads, perturbations, meta passes) run the original module in eager mode.
Cheap on CPU: dynamo captures the graph, a counting backend runs it as captured (no code
generation), and the eager model is the reference, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dynamtl as dm

TASKS = ("a", "b", "c")

METHODS = {
    "equal": lambda: {"weighting": dm.Equal()},
    "static": lambda: {"weighting": dm.Static({"a": 1.0, "b": 0.5, "c": 2.0})},
    "uncertainty": lambda: {"weighting": dm.Uncertainty()},
    "dwa": lambda: {"weighting": dm.DWA()},
    "rlw": lambda: {"weighting": dm.RLW()},
    "famo": lambda: {"weighting": dm.FAMO()},
    "gradnorm": lambda: {"weighting": dm.GradNorm()},
    "gcs": lambda: {"weighting": dm.GCS(main="a")},
    "ol-aux": lambda: {"weighting": dm.OLAux(main="a", interval=1)},
    "auto-lambda": lambda: {"weighting": dm.AutoLambda(lr=0.01)},
    "auto-lambda-lagged": lambda: {"weighting": dm.AutoLambda(lr=0.01, order="lagged")},
    "hydalearn": lambda: {"weighting": dm.HydaLearn(main="a")},
    "pcgrad": lambda: {"aggregation": dm.PCGrad()},
    "graddrop": lambda: {"aggregation": dm.GradDrop()},
    "cagrad": lambda: {"aggregation": dm.CAGrad(c=0.4)},
    "mgda": lambda: {"aggregation": dm.MGDA()},
    "mgda-ub": lambda: {"aggregation": dm.MGDA(upper_bound=True)},
    "imtl-g": lambda: {"aggregation": dm.IMTLG()},
    "nash-mtl": lambda: {"aggregation": dm.NashMTL()},
    "aligned-mtl": lambda: {"aggregation": dm.AlignedMTL()},
    "gradvac": lambda: {"aggregation": dm.GradVac()},
}


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Dropout(0.2))
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(12, 1) for t in TASKS})

    def forward(self, x):
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=g), {t: torch.randn(16, generator=g) + i for i, t in enumerate(TASKS)}


def train(model: torch.nn.Module, module: torch.nn.Module, method: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    module.load_state_dict(Net().state_dict())
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    tasks = dm.Tasks(dict.fromkeys(TASKS, F.mse_loss))
    mtl = dm.MultiTask(model, tasks, opt, representation="trunk", **METHODS[method]())
    weights = [mtl.step(batch(i), meta_batch=batch(100 + i)).weights for i in range(2)]
    return [p.detach().clone() for p in module.parameters()] + weights


@pytest.mark.parametrize("method", list(METHODS))
def test_a_compiled_model_trains_as_the_eager_one(method: str) -> None:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()  # a fresh cache: no recompilation limit carried over from other tests
    counter = CompileCounter()  # runs the captured graphs as they are: eager numerics, counted
    module = Net()
    found = train(torch.compile(module, backend=counter), module, method)
    assert counter.frame_count >= 1 and counter.op_count > 0  # the real forward pass was compiled
    eager = Net()
    expected = train(eager, eager, method)
    for f, e in zip(found, expected):
        torch.testing.assert_close(f, e, rtol=0, atol=0)


def test_parameter_names_are_the_modules_own() -> None:
    module = Net()
    mtl = dm.MultiTask(torch.compile(module, backend="eager"), dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)),
                       torch.optim.SGD(module.parameters(), lr=0.1), representation="trunk")
    assert set(mtl.objective.params) == {n for n, _ in module.named_parameters()}
