"""Every aggregation reports the weights αₖ it gave the weighted task gradients: the update
of the shared parameters is Σₖ αₖλₖ∇Lₖ (exactly, for aggregations whose update is a
combination of the rows; the least-squares combination for GradDrop), and the step's info
logs them as it logs λ. Every weighting and aggregation shows its arguments in its repr."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm
from dynamtl.aggregation._solvers import combine_rows
from dynamtl.aggregation.base import GradientAggregation, fitted_row_weights
from dynamtl.registry import AGGREGATIONS, WEIGHTINGS, MethodContext, parse_method

TASKS = ("main", "aux", "other")
WEIGHTS = {"main": 1.0, "aux": 0.5, "other": 2.0}
CONTEXT = MethodContext(tasks=TASKS, primary=("main",), auxiliary=True, seed=1)
REQUIRED = {"static": {"weights": "main:1,aux:0.5,other:0.25"}}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})

    def forward(self, x):
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def _step(aggregation, representation=None):
    torch.manual_seed(0)
    model = Net().double()
    tasks = dm.Tasks(dict.fromkeys(TASKS, F.mse_loss))
    mtl = dm.MultiTask(model, tasks, None, weighting=dm.Static(WEIGHTS), aggregation=aggregation,
                       representation=representation)
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64)
    batch = (x, {t: torch.randn(10, generator=g, dtype=torch.float64) for t in TASKS})
    extra = [(torch.randn(10, 4, generator=g, dtype=torch.float64),
              {t: torch.randn(10, generator=g, dtype=torch.float64) for t in TASKS})
             for _ in range(aggregation.batches_per_step - 1)]  # SDMGrad, MoDo: weights from other batches
    info = mtl.backward(batch, extra_batches=extra)
    out = twin(*batch[:1])
    names, params = zip(*twin.named_parameters())
    grads = [
        torch.autograd.grad(WEIGHTS[t] * F.mse_loss(out[t], batch[1][t]), params, retain_graph=True, allow_unused=True)
        for t in TASKS
    ]
    return model, names, grads, info


@pytest.mark.parametrize("name", [n for n in AGGREGATIONS if n != "graddrop"])
def test_the_shared_update_is_the_reported_combination(name):
    aggregation = parse_method(name).build(CONTEXT)[1].double()
    model, names, grads, info = _step(aggregation)
    alpha = info.aggregation_weights
    assert alpha is not None and alpha.shape == (3,) and torch.isfinite(alpha).all()
    trunk = [i for i, n in enumerate(names) if n.startswith("trunk")]
    params = dict(model.named_parameters())
    for i in trunk:
        expected = sum(alpha[k] * grads[k][i] for k in range(3))
        torch.testing.assert_close(params[names[i]].grad, expected, rtol=1e-8, atol=1e-12)
    assert info.as_dict()["aggregation_weight/aux"] == pytest.approx(float(alpha[1]))
    if name == "sum":
        assert torch.equal(alpha, torch.ones(3, dtype=alpha.dtype))


def test_graddrop_reports_the_least_squares_combination():
    model, names, grads, info = _step(dm.GradDrop(seed=0).double())
    trunk = [i for i, n in enumerate(names) if n.startswith("trunk")]
    rows = torch.stack([torch.cat([grads[k][i].reshape(-1) for i in trunk]) for k in range(3)])
    update = torch.cat([dict(model.named_parameters())[names[i]].grad.reshape(-1) for i in trunk])
    residual = update - info.aggregation_weights @ rows
    torch.testing.assert_close(rows @ residual, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-10)


def test_the_fit_is_exact_for_a_combination_and_minimum_norm_for_dependent_rows():
    rows = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(fitted_row_weights(rows, alpha @ rows), alpha)
    twice = torch.cat([rows[:1], rows[:1]])  # the same row twice: split evenly
    torch.testing.assert_close(fitted_row_weights(twice, rows[0]), torch.tensor([0.5, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("scale", [1e30, 1e-30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_the_fit_neither_overflows_nor_underflows_on_huge_or_tiny_rows(scale, dtype):
    """Jd of rows of size 1e30 is ~1e60, beyond float32: the fit must still give finite
    weights that reproduce d (it crashed LAPACK or gave NaN weights to GradVac)."""
    rows = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    scaled = (scale * rows).to(dtype)
    fitted = fitted_row_weights(scaled, combine_rows(alpha, scaled))
    tolerance = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(fitted, alpha, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", ["gradvac", "graddrop"])
@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_combine_only_aggregations_report_finite_weights_for_huge_or_tiny_rows(name, scale):
    rows = torch.tensor([[1.0, 0.0, 0.0], [-0.9, 0.5, 0.0], [0.2, -1.0, 0.3]]) * scale
    aggregation = parse_method(name).build(CONTEXT)[1]
    alpha, update = aggregation.weights_and_update(rows)
    assert torch.isfinite(alpha).all() and torch.isfinite(update).all()
    torch.testing.assert_close(combine_rows(alpha, rows), update, rtol=1e-4, atol=1e-4 * scale)


def test_mgda_upper_bound_reports_its_weights():
    model, names, grads, info = _step(dm.MGDA(upper_bound=True).double(), representation="trunk")
    alpha = info.aggregation_weights
    assert float(alpha.sum()) == pytest.approx(1.0)
    params = dict(model.named_parameters())
    for i, n in enumerate(names):
        expected = sum(alpha[k] * grads[k][i] for k in range(3) if grads[k][i] is not None)
        torch.testing.assert_close(params[n].grad, expected, rtol=1e-8, atol=1e-12)


def test_a_stateful_aggregation_is_called_once_per_step():
    class Counting(GradientAggregation):
        calls = 0

        def combine(self, jacobian):
            Counting.calls += 1
            return jacobian.sum(0)

    _step(Counting().double())
    assert Counting.calls == 1


@pytest.mark.parametrize("name", [n for n in [*WEIGHTINGS, *AGGREGATIONS] if n != "stl"])
def test_the_repr_is_the_call_with_its_arguments(name):
    weighting, aggregation = parse_method(name, REQUIRED.get(name)).build(CONTEXT)
    method = aggregation if name in AGGREGATIONS else weighting
    text = repr(method)
    assert text.startswith(f"{type(method).__name__}(")
    defaults = (AGGREGATIONS.get(name) or WEIGHTINGS[name]).option_defaults()
    for option, default in defaults.items():
        if option not in REQUIRED.get(name, {}):
            built = getattr(method, option, None)  # a method given by name shows as the one built (CR-MOGM)
            assert f"{option}={built if isinstance(built, torch.nn.Module) else default!r}" in text
    if "lambda" not in text and "\n" not in text:  # no factory, no child module: the repr rebuilds it
        assert repr(eval(text, vars(dm))) == text  # our own repr, rebuilt


@pytest.mark.parametrize(("aggregation", "drawn"), [(dm.UPGrad, True), (dm.Sum, False)], ids=["upgrad", "sum"])
def test_a_run_plots_its_aggregation_weights_when_they_change(tmp_path, aggregation, drawn):
    pytest.importorskip("matplotlib", reason="plots need matplotlib: pip install 'dynamtl[report]'")
    import json

    from dynamtl.report.plots import plot_run, weights_figure

    torch.manual_seed(0)
    model = Net().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)), optimizer, aggregation=aggregation())
    g = torch.Generator().manual_seed(0)
    lines = []
    for step in range(1, 5):
        x = torch.randn(10, 4, generator=g, dtype=torch.float64)
        info = mtl.step((x, {t: torch.randn(10, generator=g, dtype=torch.float64) for t in TASKS}))
        lines.append({"step": step, **info.as_dict()})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"benchmark": "toy", "method": "upgrad", "seed": 0}))
    (run / "steps.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    written = plot_run(run)
    assert ((run / "plots" / "aggregation-weights.png") in written) is drawn
    if drawn:
        figure = weights_figure(run, aggregation=True)
        plotted = [list(line.get_ydata()) for line in figure.axes[0].get_lines()]
        assert plotted == [[line[f"aggregation_weight/{t}"] for line in lines] for t in TASKS]
