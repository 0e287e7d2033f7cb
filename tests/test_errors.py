"""Every user error gives an error that names the problem and the fix.

The messages are matched, so that a test fails when a message loses its key information.
"""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm

NAMES = ("a", "b")


@pytest.fixture
def model(make_model):
    return make_model(NAMES)


@pytest.fixture
def tasks(make_tasks):
    return make_tasks(NAMES)


@pytest.fixture
def batch(make_batch):
    return make_batch(NAMES)


@pytest.fixture
def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


# --- task names ---


@pytest.mark.parametrize(
    ("make_weighting", "match"),
    [
        (
            lambda: dm.Static({"a": 1.0}),
            r"Static has no weight for task\(s\) \['b'\]; give one for each of \['a', 'b'\]",
        ),
        (
            lambda: dm.Static({"a": 1.0, "b": 1.0, "x": 1.0}),
            r"Static's option weights names task\(s\) \['x'\] that are not among the tasks \['a', 'b'\]",
        ),
        (
            lambda: dm.AutoLambda(primary="x"),
            r"unknown primary task\(s\) \['x'\]: they are not among the tasks \['a', 'b'\]",
        ),
        (lambda: dm.AutoLambda(primary=["a", "x"]), r"unknown primary task\(s\) \['x'\]"),
        (lambda: dm.HydaLearn(main="x"), r"unknown main task\(s\) \['x'\]: they are not among the tasks \['a', 'b'\]"),
        (lambda: dm.AutoLambda(primary=[]), r"the set of primary tasks is empty: name at least one of \['a', 'b'\]"),
        (lambda: dm.HydaLearn(main=[]), r"the set of main tasks is empty: name at least one of \['a', 'b'\]"),
        (lambda: dm.HydaLearn(main=["a", "a"]), r"main tasks are named twice: \['a', 'a'\]"),
        (
            lambda: dm.Equal().bind(["a", "c"]),
            r"Equal is bound to tasks \['a', 'c'\], not \['a', 'b'\]: use one weighting per task set",
        ),
    ],
    ids=[
        "static-missing",
        "static-unknown",
        "primary-unknown",
        "primary-partly-unknown",
        "main-unknown",
        "primary-empty",
        "main-empty",
        "main-repeated",
        "bound-to-other-tasks",
    ],
)
def test_weighting_names_tasks_the_model_does_not_have(make_weighting, match, model, tasks, sgd):
    with pytest.raises(ValueError, match=match):
        dm.MultiTask(model, tasks, sgd, weighting=make_weighting())


def test_static_needs_weights():
    with pytest.raises(ValueError, match=r"Static needs a weight per task: Static\(\{'task': 1.0, ...\}\)"):
        dm.Static({})


@pytest.mark.parametrize(
    ("losses", "error", "match"),
    [
        ({}, ValueError, r"Tasks needs at least one task: Tasks\(\{'name': loss_fn, ...\}\)"),
        ({"": F.mse_loss}, ValueError, r"task names must be non-empty strings, got ''"),
        ({"a": 3.0}, TypeError, r"the loss of task 'a' is not callable: 3.0"),
    ],
    ids=["empty", "empty-name", "not-callable"],
)
def test_bad_tasks(losses, error, match):
    with pytest.raises(error, match=match):
        dm.Tasks(losses)


def test_batch_targets_lack_a_task(model, tasks, sgd, batch):
    x, targets = batch
    misspelt = (x, {"a": targets["a"], "bb": targets["b"]})
    with pytest.raises(
        KeyError,
        match=re.escape(
            "the training batch's targets: missing task(s) ['b']; expected keys ['a', 'b'], got ['a', 'bb']"
        ),
    ):
        dm.MultiTask(model, tasks, sgd).step(misspelt)


def test_model_outputs_lack_a_task(make_model, tasks, batch):
    model = make_model(("a", "bb"))
    with pytest.raises(
        KeyError,
        match=re.escape("the model's outputs: missing task(s) ['b']; expected keys ['a', 'b'], got ['a', 'bb']"),
    ):
        dm.MultiTask(model, tasks).backward(batch)


def test_model_must_return_a_mapping(tasks, batch):
    with pytest.raises(TypeError, match=r"the model must return a mapping task -> prediction, got Tensor"):
        dm.MultiTask(nn.Linear(4, 1).double(), tasks).backward(batch)


# --- what a method needs: optimizer, meta batch ---


@pytest.mark.parametrize(
    ("make_weighting", "name"),
    [(dm.AutoLambda, "AutoLambda"), (lambda: dm.HydaLearn(main="a"), "HydaLearn")],
    ids=["auto_lambda", "hydalearn"],
)
def test_look_ahead_needs_the_optimizer(make_weighting, name, model, tasks):
    match = rf"{name} needs the model's optimizer: MultiTask\(model, tasks, optimizer, weighting=\.\.\.\)"
    with pytest.raises(ValueError, match=match):
        dm.MultiTask(model, tasks, weighting=make_weighting())


def test_hydalearn_with_a_step_size_needs_no_optimizer(model, tasks, batch):
    dm.MultiTask(model, tasks, weighting=dm.HydaLearn(main="a", step_size=0.1)).backward(batch)
    assert all(p.grad is not None for p in model.parameters())


def test_step_needs_the_optimizer(model, tasks, batch):
    mtl = dm.MultiTask(model, tasks)
    match = re.escape("step() needs the optimizer: MultiTask(model, tasks, optimizer, ...), or call backward()")
    with pytest.raises(ValueError, match=match):
        mtl.step(batch)
    mtl.backward(batch)  # which works without one
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("make_weighting", "name"),
    [(dm.AutoLambda, "AutoLambda"), (lambda: dm.HydaLearn(main="a", gain_batch="meta"), "HydaLearn")],
    ids=["auto_lambda", "hydalearn-meta"],
)
@pytest.mark.parametrize("call", ["step", "backward"])
def test_meta_batch_is_required_at_once(make_weighting, name, call, model, tasks, sgd, batch):
    mtl = dm.MultiTask(model, tasks, sgd, weighting=make_weighting())
    expected = rf"{name} needs a meta batch: call step\(batch, meta_batch=\.\.\.\) with a batch"
    with pytest.raises(ValueError, match=expected):
        getattr(mtl, call)(batch)
    assert all(p.grad is None for p in model.parameters())  # before any forward or backward pass


def test_hydalearn_on_the_current_batch_needs_no_meta_batch(model, tasks, sgd, batch):
    info = dm.MultiTask(model, tasks, sgd, weighting=dm.HydaLearn(main="a")).step(batch)
    assert float(info.weights.sum()) == pytest.approx(2.0)


def test_unsupported_optimizer_lists_the_supported_ones(model, tasks):
    opt = torch.optim.RMSprop(model.parameters(), lr=0.1)
    match = re.escape("the look-ahead cannot emulate RMSprop; supported optimizers: ")
    match += re.escape("torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW")
    with pytest.raises(TypeError, match=match):
        dm.MultiTask(model, tasks, opt, weighting=dm.AutoLambda())


def test_look_ahead_method_is_not_a_loss_weighting():
    match = r"AutoLambda needs more than the losses .*: " + re.escape(
        "use dynamtl.MultiTask(model, tasks, optimizer, weighting=...)"
    )
    with pytest.raises(TypeError, match=match):
        dm.AutoLambda()({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})


# --- losses ---


@pytest.mark.parametrize(("bad", "shown"), [(float("nan"), "nan"), (float("inf"), "inf")])
def test_non_finite_loss_names_the_task_and_the_step(bad, shown, model, tasks, sgd, batch):
    mtl = dm.MultiTask(model, tasks, sgd)
    mtl.step(batch)
    x, targets = batch
    poisoned = (x, {"a": targets["a"], "b": targets["b"].clone().index_fill_(0, torch.tensor([3]), bad)})
    match = re.escape(f"non-finite loss in step 2 (1-based) for task(s) {{'b': {shown}}}, in the training pass; ")
    with pytest.raises(dm.NonFiniteLossError, match=match) as caught:
        mtl.step(poisoned)
    assert "'a'" not in str(caught.value)
    assert isinstance(caught.value, FloatingPointError)


@pytest.fixture
def torch_warns_always():
    """Torch's warnings every time, not once per process, for the duration of the test."""
    previous = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(previous)


@pytest.mark.filterwarnings("error")
def test_non_finite_loss_error_comes_without_a_warning(torch_warns_always, model, tasks, sgd, batch):
    x, targets = batch
    poisoned = (x, {"a": targets["a"], "b": torch.full_like(targets["b"], float("nan"))})
    with pytest.raises(dm.NonFiniteLossError):
        dm.MultiTask(model, tasks, sgd).step(poisoned)


def test_non_finite_check_can_be_turned_off(model, tasks, sgd, batch):
    x, targets = batch
    poisoned = (x, {"a": targets["a"], "b": torch.full_like(targets["b"], float("nan"))})
    info = dm.MultiTask(model, tasks, sgd, check_finite=False).step(poisoned)
    assert info.losses[1].isnan()


@pytest.mark.parametrize(
    ("loss", "shown"),
    [(lambda p, t: F.mse_loss(p, t, reduction="none"), r"\[8\]"), (lambda p, t: 1.0, "float")],
    ids=["unreduced", "not-a-tensor"],
)
def test_loss_must_be_a_scalar_tensor(loss, shown, model, batch):
    tasks = dm.Tasks({"a": F.mse_loss, "b": loss})
    match = f"the loss of task 'b' returned {shown}; " + re.escape(
        "a task loss must be a scalar tensor: reduce it (e.g. reduction='mean')"
    )
    with pytest.raises(ValueError, match=match):
        dm.MultiTask(model, tasks).backward(batch)


def test_loss_vector_must_match_the_tasks():
    with pytest.raises(ValueError, match=r"Equal expects 2 losses in task order, got shape \[3\]"):
        dm.Equal().bind(NAMES)(torch.ones(3))


def test_loss_vector_needs_bound_task_names():
    with pytest.raises(RuntimeError, match=r"Equal is not bound to tasks yet: call \.bind\(task_names\)"):
        dm.Equal()(torch.ones(2))


def test_model_without_trainable_parameters(model, tasks):
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="the model has no parameter with requires_grad=True: nothing to train"):
        dm.MultiTask(model, tasks)


# --- batch structure ---

PAIR = (
    r"a batch is a pair \(inputs, \{task: target\}\); "
    r"for one input batch per task build Tasks\(\.\.\., multi_input=True\)"
)


@pytest.mark.parametrize(
    "reshape",
    [
        lambda x, targets: {"a": (x, targets["a"]), "b": (x, targets["b"])},
        lambda x, targets: (x, targets, None),
        lambda x, targets: (x, targets["a"]),
        lambda x, targets: x,
    ],
    ids=["per-task-dict", "triple", "targets-not-a-mapping", "inputs-only"],
)
def test_bad_batch_structure(reshape, model, tasks, sgd, batch):
    with pytest.raises(TypeError, match=PAIR):
        dm.MultiTask(model, tasks, sgd).step(reshape(*batch))


def test_bad_meta_batch_structure(model, tasks, sgd, batch):
    mtl = dm.MultiTask(model, tasks, sgd, weighting=dm.AutoLambda())
    with pytest.raises(TypeError, match=PAIR):
        mtl.step(batch, meta_batch=batch[1])


def test_multi_input_batch_must_be_a_mapping(model, make_tasks, batch):
    with pytest.raises(TypeError, match=r"multi-input tasks take a batch \{task: \(inputs, target\)\}, got tuple"):
        dm.MultiTask(model, make_tasks(NAMES, multi_input=True)).backward(batch)


def test_multi_input_batch_lacks_a_task(model, make_tasks, make_batch):
    batch = make_batch(("a",), multi_input=True)
    with pytest.raises(KeyError, match=re.escape("missing task(s) ['b']; expected keys ['a', 'b'], got ['a']")):
        dm.MultiTask(model, make_tasks(NAMES, multi_input=True)).backward(batch)


# --- invalid settings ---


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: dm.AutoLambda(order="ahead"), r"order must be one of \['lookahead', 'lagged'\], got 'ahead'"),
        (
            lambda: dm.AutoLambda(hypergradient="fd"),
            r"hypergradient must be one of \['finite_difference', 'exact'\], got 'fd'",
        ),
        (lambda: dm.HydaLearn("a", gain="exact"), r"gain must be one of \['lookahead', 'first_order'\], got 'exact'"),
        (lambda: dm.HydaLearn("a", gain_batch="val"), r"gain_batch must be one of \['current', 'meta'\], got 'val'"),
        (lambda: dm.HydaLearn("a", normalize="max"), r"normalize must be one of \['sum', 'main'\], got 'max'"),
        (
            lambda: dm.AutoLambda(hypergradient="exact", order="lagged"),
            r"the exact hypergradient differentiates through the virtual step: use order='lookahead'",
        ),
        (lambda: dm.AutoLambda(interval=0), r"interval must be >= 1, got 0"),
        (lambda: dm.AutoLambda(lr=0.0), r"AutoLambda's option lr must be > 0 and finite, got 0.0"),
        (lambda: dm.AutoLambda(epsilon=-1.0), r"AutoLambda's option epsilon must be > 0 and finite, got -1.0"),
        (lambda: dm.HydaLearn("a", step_size=0.0), r"step_size must be > 0 and finite, got 0.0"),
        (lambda: dm.HydaLearn("a", floor=1.0), r"HydaLearn\'s option floor must be in \[0, 1\), got 1.0"),
        (lambda: dm.HydaLearn("a", total=0.0), r"total must be > 0 and finite, got 0.0"),
        (lambda: dm.DWA(temperature=0.0), r"DWA's option temperature must be > 0 and finite, got 0.0"),
    ],
    ids=[
        "order",
        "hypergradient",
        "gain",
        "gain_batch",
        "normalize",
        "exact-lagged",
        "interval",
        "lr",
        "epsilon",
        "step_size",
        "floor",
        "total",
        "temperature",
    ],
)
def test_invalid_setting(make, match):
    with pytest.raises(ValueError, match=match):
        make()
