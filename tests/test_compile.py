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
    "gradvac-layer": lambda: {"aggregation": dm.GradVac(granularity="layer")},
    "upgrad": lambda: {"aggregation": dm.UPGrad()},
    "dualproj": lambda: {"aggregation": dm.DualProj()},
    "config": lambda: {"aggregation": dm.ConFIG()},
    "moco": lambda: {"aggregation": dm.MoCo()},
    "fairgrad": lambda: {"aggregation": dm.FairGrad()},
    "cr-mogm-upgrad": lambda: {"aggregation": dm.CRMOGM(dm.UPGrad())},
    "upgrad-representation": lambda: {"aggregation": dm.OnRepresentation(dm.UPGrad())},
    "excess-mtl": lambda: {"weighting": dm.ExcessMTL()},
    "stch": lambda: {"weighting": dm.STCH()},
    "db-mtl": lambda: {"weighting": dm.DBMTL()},
    "gls": lambda: {"weighting": dm.GLS()},
    "imtl": lambda: {"weighting": dm.IMTLL(), "aggregation": dm.IMTLG()},
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


def train(
    model: torch.nn.Module, module: torch.nn.Module, method: str, compile_submodules: bool = False
) -> list[torch.Tensor]:
    torch.manual_seed(0)
    module.load_state_dict(Net().state_dict())
    if compile_submodules:  # through AOTAutograd, as the default backend does
        module.trunk = torch.compile(module.trunk, backend="aot_eager")
        for task in TASKS:
            module.heads[task] = torch.compile(module.heads[task], backend="aot_eager")
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


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU())
        self.a, self.b = torch.nn.Linear(12, 1), torch.nn.Linear(12, 1)

    def forward(self, x):
        h = self.trunk(x)
        return {"a": self.a(h).squeeze(1), "b": self.b(h).squeeze(1)}


@pytest.mark.parametrize("aggregation", [lambda: dm.OnRepresentation(dm.UPGrad()), lambda: dm.MGDA(upper_bound=True)])
def test_a_representation_aggregation_on_a_model_compiled_as_a_whole_names_the_fix(aggregation) -> None:
    """Through AOTAutograd (as with the default backend) the hook on the representation
    module does not run in the compiled graph: the error names torch.compile and how to
    compile instead (it said to pass ``representation=``, which the user had done)."""
    torch._dynamo.reset()
    module = TwoHeads()
    tasks = dm.Tasks(dict.fromkeys("ab", F.mse_loss))
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    mtl = dm.MultiTask(torch.compile(module, backend="aot_eager"), tasks, opt, aggregation=aggregation(),
                       representation="trunk")
    x, y = batch(0)
    with pytest.raises(ValueError, match=r"compile'd as a whole.*model\.trunk = torch\.compile\(model\.trunk\)"):
        for _ in range(3):  # the first call traces the model, with the hook; the compiled graph runs without
            before = [p.detach().clone() for p in module.parameters()]
            mtl.step((x, {"a": y["a"], "b": y["b"]}))
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), before))


def test_a_representation_aggregation_trains_with_its_submodules_compiled() -> None:
    """The fix that message gives: compiled submodules, the model itself uncompiled."""
    torch._dynamo.reset()
    module = Net()
    found = train(module, module, "upgrad-representation", compile_submodules=True)
    eager = Net()
    expected = train(eager, eager, "upgrad-representation")
    for f, e in zip(found, expected):
        torch.testing.assert_close(f, e)


@pytest.mark.parametrize("make", [lambda: {"aggregation": dm.UPGrad()}, lambda: {"aggregation": dm.MGDA()},
                                  lambda: {"weighting": dm.DBMTL()}, lambda: {"weighting": dm.GradNorm()}],
                         ids=["upgrad", "mgda", "db-mtl", "gradnorm"])
@pytest.mark.parametrize("in_place", [False, True], ids=["torch.compile", "module.compile"])
def test_per_task_gradients_on_a_model_compiled_as_a_whole_are_refused(make, in_place) -> None:
    """Through AOTAutograd (as with the default backend) the backward of a model compiled as a
    whole is one node: it gives task b's head a zero gradient from task a's loss instead of
    none, so the heads were taken as shared and weighted like the trunk (a silent wrong
    step). The step is refused with the fix, the model unchanged; compiling the submodules
    instead trains as the eager model does."""
    torch._dynamo.reset()
    module = TwoHeads()
    if in_place:
        module.compile(backend="aot_eager")
        model = module
    else:
        model = torch.compile(module, backend="aot_eager")
    tasks = dm.Tasks(dict.fromkeys("ab", F.mse_loss))
    mtl = dm.MultiTask(model, tasks, torch.optim.SGD(module.parameters(), lr=0.1), **make())
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(ValueError, match=r"compile'd as a whole.*compile its submodules instead"):
        mtl.step(batch(0))
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), before))

    torch._dynamo.reset()
    steps = []
    for compile_submodules in (True, False):
        torch.manual_seed(0)
        net = TwoHeads()
        if compile_submodules:
            net.trunk, net.a, net.b = (torch.compile(m, backend="aot_eager") for m in (net.trunk, net.a, net.b))
        run = dm.MultiTask(net, tasks, torch.optim.SGD(net.parameters(), lr=0.1), **make())
        for i in range(2):
            run.step(batch(i))
        steps.append([p.detach().clone() for p in net.parameters()])
    for compiled_p, eager_p in zip(*steps):
        torch.testing.assert_close(compiled_p, eager_p, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", [dm.DWA, lambda: dm.HydaLearn(main="a"), lambda: dm.AutoLambda(lr=0.01)],
                         ids=["dwa", "hydalearn", "auto-lambda"])
def test_a_method_without_the_heads_apart_on_a_model_compiled_as_a_whole_trains_as_the_eager_one(make) -> None:
    """Loss weightings with Sum and Auto-Lambda need no per-task gradients, HydaLearn's gains
    are inner products (a zero gradient is as none): nothing is refused, the steps are the
    eager ones."""
    torch._dynamo.reset()
    tasks = dm.Tasks(dict.fromkeys("ab", F.mse_loss))
    found = []
    for whole in (True, False):
        torch.manual_seed(0)
        net = TwoHeads()
        model = torch.compile(net, backend="aot_eager") if whole else net
        run = dm.MultiTask(model, tasks, torch.optim.SGD(net.parameters(), lr=0.1), weighting=make())
        for i in range(2):
            run.step(batch(i), meta_batch=batch(100 + i))
        found.append([p.detach().clone() for p in net.parameters()])
    for a, b in zip(*found):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
