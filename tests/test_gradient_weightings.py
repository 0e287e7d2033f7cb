"""GradNorm, FAMO, GCS and OL-AUX: hand-computed cases, independent computations, state."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import dynamtl as dm
from dynamtl.weighting.famo import FAMO
from dynamtl.weighting.gcs import GCS
from dynamtl.weighting.gradnorm import GradNorm
from dynamtl.weighting.ol_aux import OLAux

F64 = torch.float64
TASKS = ("a", "b", "c")


def difference(prediction: Tensor, target: Tensor) -> Tensor:
    return prediction - target


class LinearTasks(nn.Module):
    """Task k predicts headₖ·⟨dₖ, W⟩; with the loss prediction − target, ∇_W Lₖ = headₖ dₖ."""

    def __init__(
        self, directions: dict[str, list[float]], *, heads: bool = False, init: list[float] | None = None
    ) -> None:
        super().__init__()
        dim = len(next(iter(directions.values())))
        self.shared = nn.Parameter(torch.tensor(init, dtype=F64) if init else torch.zeros(dim, dtype=F64))
        self.directions = {n: torch.tensor(d, dtype=F64) for n, d in directions.items()}
        ones = {n: nn.Parameter(torch.ones((), dtype=F64)) for n in directions}
        self.heads = nn.ParameterDict(ones) if heads else None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {n: d @ self.shared for n, d in self.directions.items()}
        return {n: p * self.heads[n] for n, p in out.items()} if self.heads is not None else out


def linear_setup(
    directions: dict[str, list[float]], weighting: dm.Weighting, **kwargs: object
) -> tuple[LinearTasks, dm.MultiTask]:
    model = LinearTasks(directions, **kwargs)  # type: ignore[arg-type]
    tasks = dm.Tasks(dict.fromkeys(directions, difference))
    return model, dm.MultiTask(model, tasks, torch.optim.SGD(model.parameters(), lr=0.01), weighting=weighting)


def targets(**values: float) -> tuple[Tensor, dict[str, Tensor]]:
    return torch.zeros(1, dtype=F64), {n: torch.tensor(v, dtype=F64) for n, v in values.items()}


Setup = Callable[..., tuple[nn.Module, torch.optim.Optimizer, dm.MultiTask]]
Batches = Callable[[int], list[Any]]


@pytest.fixture
def net_setup(make_model: Callable[..., nn.Module], make_tasks: Callable[..., dm.Tasks]) -> Setup:
    """``net_setup(weighting, seed=0)``: the conftest's TinyNet for tasks a, b, c, SGD with
    momentum, and a MultiTask with ``weighting``."""

    def setup(weighting: dm.Weighting, seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, dm.MultiTask]:
        model = make_model(TASKS, seed=seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, optimizer, dm.MultiTask(model, make_tasks(TASKS), optimizer, weighting=weighting)

    return setup


@pytest.fixture
def batches(make_batch: Callable[..., Any]) -> Batches:
    """``batches(n)``: n different batches for tasks a, b, c."""
    return lambda n: [make_batch(TASKS, seed=1 + i) for i in range(n)]


def flat(model: nn.Module, grads: dict[str, Tensor | None]) -> Tensor:
    """``grads`` (parameter name -> gradient) as one vector in ``model``'s parameter order, None as 0."""
    parts = [torch.zeros_like(p) if grads[n] is None else grads[n] for n, p in model.named_parameters()]
    return torch.cat([part.reshape(-1) for part in parts])  # type: ignore[union-attr]


def sgd(lr: float, weight_decay: float = 0.0) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    return lambda params: torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


# ---------------------------------------------------------------- GradNorm


def test_gradnorm_update_and_renormalisation_by_hand() -> None:
    # ∇_W L_a = (3, 4), ‖·‖ = 5; ∇_W L_b = (1, 0), ‖·‖ = 1. SGD on w with lr 0.1.
    gn = GradNorm(alpha=1.5, meta_optimizer=sgd(0.1))
    _, mtl = linear_setup({"a": [3.0, 4.0], "b": [1.0, 0.0]}, gn)
    # step 0: L = (2, 4) = L(0), r = (1, 1); G = (5, 1), Ḡ = 3: targets 3, 3;
    # ∂L_grad/∂w = (+5, −1); w = (1 − 0.5, 1 + 0.1) = (0.5, 1.1), ×2/1.6 = (0.625, 1.375).
    info = mtl.backward(targets(a=-2.0, b=-4.0))
    assert info.weights.tolist() == [1.0, 1.0]
    assert gn.layer_names == ("shared",)
    torch.testing.assert_close(gn.task_weights.detach(), torch.tensor([0.625, 1.375], dtype=F64))
    # step 1: L = (1, 4): L̃ = (½, 1), r = (⅔, 4/3); G = (3.125, 1.375), Ḡ = 2.25;
    # targets 2.25·r^1.5 = (1.2247, 3.4641): signs (+, −) again, w = (0.125, 1.475) ×1.25.
    info = mtl.backward(targets(a=-1.0, b=-4.0))
    torch.testing.assert_close(info.weights, torch.tensor([0.625, 1.375], dtype=F64))
    expected_loss = abs(3.125 - 2.25 * (2 / 3) ** 1.5) + abs(1.375 - 2.25 * (4 / 3) ** 1.5)
    assert gn.last_loss is not None
    assert float(gn.last_loss) == pytest.approx(expected_loss, rel=1e-12)
    torch.testing.assert_close(gn.task_weights.detach(), torch.tensor([0.15625, 1.84375], dtype=F64))


def test_gradnorm_default_adam_moves_each_weight_by_lr() -> None:
    gn = GradNorm(lr=0.01)
    _, mtl = linear_setup({"a": [3.0, 4.0], "b": [1.0, 0.0]}, gn)
    mtl.backward(targets(a=-2.0, b=-4.0))  # Adam's first step is lr·sign(grad): (0.99, 1.01), sum already 2
    torch.testing.assert_close(gn.task_weights.detach(), torch.tensor([0.99, 1.01], dtype=F64), rtol=0, atol=1e-9)
    assert gn.model_optimizer_parameters() == []


def test_gradnorm_default_layer_is_the_last_shared_weight_matrix(net_setup: Setup, batches: Batches) -> None:
    gn = GradNorm()
    net_setup(gn)[2].step(batches(1)[0])
    assert gn.layer_names == ("trunk.0.weight",)  # not the later trunk.0.bias, nor a head's weight


def test_gradnorm_equals_double_backward(net_setup: Setup, batches: Batches, plain_losses: Any) -> None:
    alpha, lr = 0.7, 0.01
    gn = GradNorm(alpha=alpha, meta_optimizer=sgd(lr), layer="trunk.0.weight")
    model, _, mtl = net_setup(gn)
    data = batches(3)
    with torch.no_grad():
        initial = plain_losses(model, data[0], TASKS)
    mtl.step(data[0])
    torch.testing.assert_close(gn.initial_losses, initial)
    for batch in data[1:]:
        w = gn.task_weights.detach().clone().requires_grad_()
        losses = plain_losses(model, batch, TASKS)
        layer = model.trunk[0].weight
        norms = torch.stack(
            [torch.autograd.grad(w[i] * losses[i], layer, create_graph=True)[0].norm() for i in range(3)]
        )
        ratios = losses.detach() / initial
        target = (norms.mean() * (ratios / ratios.mean()) ** alpha).detach()
        gradnorm_loss = (norms - target).abs().sum()
        (grad,) = torch.autograd.grad(gradnorm_loss, w)
        moved = w.detach() - lr * grad
        info = mtl.step(batch)
        torch.testing.assert_close(info.weights, w.detach())
        assert float(gn.last_loss) == pytest.approx(float(gradnorm_loss.detach()), rel=1e-10)  # type: ignore[arg-type]
        torch.testing.assert_close(gn.task_weights.detach(), 3 * moved / moved.sum())
        assert float(gn.task_weights.detach().sum()) == pytest.approx(3.0, rel=1e-12)


def test_gradnorm_named_layer_concatenates_its_parameters(
    net_setup: Setup, batches: Batches, plain_losses: Any
) -> None:
    layer = ("trunk.0.weight", "trunk.0.bias")
    gn = GradNorm(layer=layer, meta_optimizer=sgd(1e-3))
    model, _, mtl = net_setup(gn)
    batch = batches(1)[0]
    losses = plain_losses(model, batch, TASKS)
    params = [model.trunk[0].weight, model.trunk[0].bias]
    norms = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        norms.append(torch.cat([g.reshape(-1) for g in grads]).norm())
    gaps = torch.stack(norms) - torch.stack(norms).mean()
    mtl.step(batch)
    assert gn.layer_names == layer
    # step 0: w = 1, r = 1, so L_grad = Σ |‖gᵢ‖ − mean ‖g‖| over the concatenated weight and bias
    assert float(gn.last_loss) == pytest.approx(float(gaps.abs().sum().detach()), rel=1e-10)  # type: ignore[arg-type]


def test_gradnorm_rejects_a_layer_that_is_not_shared(net_setup: Setup, batches: Batches) -> None:
    """A parameter the model has but not every task shares is refused at the first step (when
    sharing is known); one the model lacks, when the MultiTask is built."""
    _, _, mtl = net_setup(GradNorm(layer="heads.a.weight"))
    with pytest.raises(ValueError, match=r"not a shared trainable parameter.*\['trunk\.0\.weight', 'trunk\.0\.bias'"):
        mtl.step(batches(1)[0])
    with pytest.raises(ValueError, match=r"option layer names \['trunk\.5\.weight'\], which the model has no"):
        net_setup(GradNorm(layer="trunk.5.weight"))


def test_gradnorm_rejects_bad_arguments_and_nonpositive_first_losses() -> None:
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        GradNorm(alpha=-1.0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        GradNorm(lr=0.0)
    with pytest.raises(ValueError, match="layer is empty"):
        GradNorm(layer=[])
    _, mtl = linear_setup({"a": [1.0], "b": [2.0]}, GradNorm())
    with pytest.raises(ValueError, match="every task loss must be > 0"):
        mtl.backward(targets(a=1.0, b=-1.0))


# ---------------------------------------------------------------- FAMO


def famo_reference(history: list[list[float]], beta: float, gamma: float) -> tuple[list[float], list[float]]:
    """The paper's algorithm with plain gradient steps on ξ, in Python floats: (weights, ξ)."""
    xi = [0.0, 0.0]
    weights: list[float] = []
    for t, losses in enumerate(history):
        if t > 0:
            e = [math.exp(x) for x in xi]
            z = [v / sum(e) for v in e]
            delta = [math.log(p) - math.log(c) for p, c in zip(history[t - 1], losses)]
            mean = sum(zi * di for zi, di in zip(z, delta))
            xi = [x - beta * (zi * (di - mean) + gamma * x) for x, zi, di in zip(xi, z, delta)]
        e = [math.exp(x) for x in xi]
        ratio = [v / sum(e) / loss for v, loss in zip(e, losses)]
        weights = [r / sum(ratio) for r in ratio]
    return weights, xi


def test_famo_weights_and_logit_update_by_formula() -> None:
    famo = FAMO(meta_optimizer=sgd(0.5, weight_decay=0.1), epsilon=0.0).bind(["a", "b"])
    famo.double()
    history = [[2.0, 4.0], [1.0, 3.5], [0.5, 3.0]]
    # step 0, z = (½, ½): λ ∝ (½/2, ½/4) = (⅔, ⅓).
    first = famo.loss_weights(torch.tensor(history[0], dtype=F64))
    torch.testing.assert_close(first, torch.tensor([2 / 3, 1 / 3], dtype=F64))
    second = famo.loss_weights(torch.tensor(history[1], dtype=F64))
    # a's log-loss fell by log 2, b's by log(4/3.5): a's logit goes down by the same amount b's goes up.
    delta = math.log(2.0) - math.log(4 / 3.5)
    torch.testing.assert_close(famo.logits.detach(), torch.tensor([-0.5 * 0.25 * delta, 0.5 * 0.25 * delta], dtype=F64))
    weights, _ = famo_reference(history[:2], 0.5, 0.1)
    torch.testing.assert_close(second, torch.tensor(weights, dtype=F64))
    third = famo.loss_weights(torch.tensor(history[2], dtype=F64))  # now with weight decay on ξ ≠ 0
    weights, xi = famo_reference(history, 0.5, 0.1)
    torch.testing.assert_close(third, torch.tensor(weights, dtype=F64))
    torch.testing.assert_close(famo.logits.detach(), torch.tensor(xi, dtype=F64))
    assert float(third.sum()) == pytest.approx(1.0, rel=1e-12)


def test_famo_default_adam_first_update_is_a_sign_step() -> None:
    famo = FAMO().bind(["a", "b"])
    famo.double()
    famo.loss_weights(torch.tensor([2.0, 4.0], dtype=F64))
    famo.loss_weights(torch.tensor([1.0, 3.5], dtype=F64))
    torch.testing.assert_close(famo.logits.detach(), torch.tensor([-0.025, 0.025], dtype=F64), rtol=0, atol=1e-8)


def test_famo_min_losses() -> None:
    with pytest.raises(ValueError, match=r"FAMO's option min_losses names task\(s\) \['x'\] that are not among the "
                                         r"tasks \['a', 'b'\]"):
        FAMO(min_losses={"x": 0.0}).bind(["a", "b"])
    with pytest.raises(ValueError, match=r"<= 0 for task\(s\) \['b'\].*min_losses"):
        FAMO().bind(["a", "b"]).loss_weights(torch.tensor([1.0, -1.0]))
    famo = FAMO(min_losses={"b": -3.0}, epsilon=0.0).bind(["a", "b"])
    torch.testing.assert_close(famo.loss_weights(torch.tensor([1.0, -1.0])), torch.tensor([2 / 3, 1 / 3]))


def test_famo_as_a_plain_loss_weighting() -> None:
    famo = FAMO()
    a, b = torch.tensor(1.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)
    famo({"a": a, "b": b}).backward()
    assert famo.task_names == ("a", "b")
    torch.testing.assert_close(torch.stack([a.grad, b.grad]), torch.tensor([0.75, 0.25]))  # type: ignore[list-item]


# ---------------------------------------------------------------- GCS


@pytest.mark.parametrize(("variant", "expected"), [("unweighted", [1.0, 1.0, 0.0]), ("weighted", [1.0, 2 / 3, 0.0])])
def test_gcs_keeps_an_aligned_and_zeroes_an_opposing_auxiliary_task(variant: str, expected: list[float]) -> None:
    directions = {"main": [1.0, 0.0, 0.0], "good": [2.0, 1.0, 2.0], "bad": [-1.0, 2.0, 2.0]}
    gcs = GCS(main="main", variant=variant)  # type: ignore[arg-type]
    _, mtl = linear_setup(directions, gcs, init=[1.0, 2.0, 3.0])
    info = mtl.backward(targets(main=0.0, good=0.0, bad=0.0))  # cos = 2/3 and −1/3
    torch.testing.assert_close(info.weights, torch.tensor(expected, dtype=F64))
    torch.testing.assert_close(gcs.last_cosines, torch.tensor([2 / 3, -1 / 3], dtype=F64))


def test_gcs_cosine_counts_only_the_shared_parameters() -> None:
    # The heads' gradients ⟨dₖ, W⟩ = (1, 10, 9) ≠ 0 would lower |cos| if they were counted.
    directions = {"main": [1.0, 0.0, 0.0], "good": [2.0, 1.0, 2.0], "bad": [-1.0, 2.0, 2.0]}
    gcs = GCS(main="main", variant="weighted")
    _, mtl = linear_setup(directions, gcs, heads=True, init=[1.0, 2.0, 3.0])
    info = mtl.backward(targets(main=0.0, good=0.0, bad=0.0))
    torch.testing.assert_close(info.weights, torch.tensor([1.0, 2 / 3, 0.0], dtype=F64))
    torch.testing.assert_close(gcs.last_cosines, torch.tensor([2 / 3, -1 / 3], dtype=F64))


def test_gcs_compares_with_the_sum_of_main_gradients() -> None:
    # ⟨m1, aux⟩ > 0 but ⟨m1 + m2, aux⟩ < 0
    directions = {"m1": [1.0, 0.0], "m2": [0.0, 1.0], "aux": [1.0, -2.0]}
    gcs = GCS(main=["m1", "m2"])
    _, mtl = linear_setup(directions, gcs)
    info = mtl.backward(targets(m1=0.0, m2=0.0, aux=0.0))
    assert info.weights.tolist() == [1.0, 1.0, 0.0]
    assert float(gcs.last_cosines[0]) == pytest.approx(-1 / math.sqrt(10), rel=1e-12)  # type: ignore[index]


def test_gcs_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="variant must be one of"):
        GCS(main="a", variant="soft")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="names every task"):
        GCS(main=["a", "b"]).bind(["a", "b"])
    with pytest.raises(ValueError, match="unknown main task"):
        GCS(main="x").bind(["a", "b"])


# ---------------------------------------------------------------- OL-AUX


def test_olaux_raises_an_aligned_and_lowers_a_conflicting_weight_by_hand() -> None:
    # Constant gradients: ⟨main, good⟩ = 2, ⟨main, bad⟩ = −1 at every step.
    ol = OLAux(main="main", interval=3, beta=0.5)
    _, mtl = linear_setup({"main": [1.0, 0.0], "good": [2.0, 1.0], "bad": [-1.0, 3.0]}, ol)
    batch = targets(main=0.0, good=0.0, bad=0.0)
    for _ in range(2):
        assert mtl.step(batch).weights.tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(ol.accumulated, torch.tensor([0.0, 4.0, -2.0], dtype=F64))
    assert mtl.step(batch).weights.tolist() == [1.0, 1.0, 1.0]  # the N-th step still uses the old weights
    # w ← w + β·a/N: good 1 + 0.5·6/3 = 2, bad 1 + 0.5·(−3)/3 = 0.5
    torch.testing.assert_close(ol.task_weights, torch.tensor([1.0, 2.0, 0.5], dtype=F64))
    assert ol.accumulated.tolist() == [0.0, 0.0, 0.0] and int(ol.count) == 0
    assert mtl.step(batch).weights.tolist() == [1.0, 2.0, 0.5]


def test_olaux_accumulates_the_inner_products_of_a_nonlinear_model(
    net_setup: Setup, batches: Batches, weighted_grads: Any
) -> None:
    ol = OLAux(main="a", interval=4, beta=0.3, init=0.5)
    model, _, mtl = net_setup(ol)
    dots = []
    for step, batch in enumerate(batches(4)):
        g = [flat(model, weighted_grads(model, batch, TASKS, one_hot)) for one_hot in torch.eye(3)]
        dots.append(torch.stack([g[0] @ g[1], g[0] @ g[2]]))
        mtl.step(batch)
        if step < 3:
            torch.testing.assert_close(ol.accumulated[1:], torch.stack(dots).sum(0))
    expected = 0.5 + 0.3 * torch.stack(dots).mean(0)
    torch.testing.assert_close(ol.task_weights, torch.cat([torch.ones(1, dtype=F64), expected]))


def test_olaux_nonnegative_and_bad_arguments() -> None:
    ol = OLAux(main="main", interval=1, beta=10.0, nonnegative=True)
    _, mtl = linear_setup({"main": [1.0, 0.0], "bad": [-1.0, 3.0]}, ol)
    mtl.step(targets(main=0.0, bad=0.0))
    assert ol.task_weights.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="OLAux's option interval must be >= 1, got 0"):
        OLAux(main="a", interval=0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        OLAux(main="a", beta=0.0)
    with pytest.raises(ValueError, match="names every task"):
        OLAux(main=["a"]).bind(["a"])


# ---------------------------------------------------------------- all four in MultiTask

MAKERS: dict[str, Callable[[], dm.Weighting]] = {
    "gradnorm": lambda: GradNorm(lr=0.05),
    "famo": lambda: FAMO(lr=0.1),
    "gcs": lambda: GCS(main="a", variant="weighted"),
    "olaux": lambda: OLAux(main="a", interval=5, beta=0.05),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_multitask_step_gives_the_weighted_sum_of_finite_task_gradients(
    name: str, net_setup: Setup, batches: Batches, weighted_grads: Any
) -> None:
    model, optimizer, mtl = net_setup(MAKERS[name]())
    assert len(optimizer.param_groups) == 1  # the weighting's own parameters stay out of it
    for batch in batches(3):
        info = mtl.backward(batch)
        grad = flat(model, {n: p.grad for n, p in model.named_parameters()})
        assert bool(torch.isfinite(grad).all()) and bool(torch.isfinite(info.weights).all())
        torch.testing.assert_close(grad, flat(model, weighted_grads(model, batch, TASKS, info.weights)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["gradnorm", "famo", "olaux"])
def test_state_dict_round_trip_continues_identically(name: str, net_setup: Setup, batches: Batches) -> None:
    data = batches(7)
    model, optimizer, mtl = net_setup(MAKERS[name]())
    for batch in data[:3]:
        mtl.step(batch)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "mtl": mtl.state_dict()}, buffer)

    def load() -> dict[str, Any]:  # a fresh copy each time, as from disk (optimizers would share tensors)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)

    saved = load()
    resumed_model, resumed_optimizer, resumed = net_setup(MAKERS[name](), seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["mtl"])
    # the control: same model and optimizer, but a fresh weighting
    saved = load()
    control_model, control_optimizer, control = net_setup(MAKERS[name](), seed=5)
    control_model.load_state_dict(saved["model"])
    control_optimizer.load_state_dict(saved["optimizer"])

    differs = False
    for batch in data[3:]:
        expected = mtl.step(batch).weights
        torch.testing.assert_close(resumed.step(batch).weights, expected, rtol=0, atol=0)
        differs |= not torch.equal(control.step(batch).weights, expected)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
    assert differs, "the weighting's state made no difference: this test could not fail"
