"""Objective: every task's loss at the model's own parameters or at any others, BatchNorm
statistics left alone, dropout replay, and multi-input tasks through MultiTask."""

import copy

import pytest
import torch

import dynamtl as dm
from dynamtl.objective import capture_rng

NAMES = ("a", "b", "c")


def perturbed(model, names=None, scale=0.3, seed=1):
    """Parameter name -> a random perturbation of the model's value (all names by default)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        n: p.detach() + scale * torch.randn(p.shape, generator=gen, dtype=p.dtype)
        for n, p in model.named_parameters()
        if names is None or n in names
    }


def loaded_copy(model, params):
    """A deep copy of ``model`` holding ``params`` (a subset of its parameters)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in twin.named_parameters():
            if n in params:
                p.copy_(params[n])
    return twin


@pytest.fixture
def setup(make_model, make_batch, make_tasks):
    """``setup(**model_options)`` -> (model, Objective, batch) on the three tasks."""

    def build(**options):
        model = make_model(NAMES, **options)
        return model, dm.Objective(model, make_tasks(NAMES)), make_batch(NAMES)

    return build


@pytest.mark.parametrize("batchnorm", [False, True])
def test_losses_at_own_params_equal_plain_forward(setup, plain_losses, batchnorm):
    model, objective, batch = setup(batchnorm=batchnorm)
    losses = objective.losses(batch)
    assert torch.equal(losses, plain_losses(model, batch, NAMES))
    assert losses.requires_grad
    with torch.no_grad():
        assert not objective.losses(batch).requires_grad


@pytest.mark.parametrize("subset", [None, ("trunk.0.weight", "heads.b.bias")], ids=["all", "subset"])
@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_losses_at_other_params_equal_forward_of_loaded_copy(setup, plain_losses, subset, batchnorm, train):
    model, objective, batch = setup(batchnorm=batchnorm)
    model.train(train)
    if batchnorm:  # running statistics away from their initial 0 and 1, so that eval mode uses them
        model(batch[0] * 3 + 1)
    leaves = {n: t.requires_grad_() for n, t in perturbed(model, subset).items()}
    twin = loaded_copy(model, leaves)
    want = plain_losses(twin, batch, NAMES)
    got = objective.losses(batch, leaves)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    weights = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    grads = torch.autograd.grad((weights * got).sum(), list(leaves.values()))
    (weights * want).sum().backward()
    twin_params = dict(twin.named_parameters())
    for n, g in zip(leaves, grads):
        torch.testing.assert_close(g, twin_params[n].grad, rtol=1e-12, atol=1e-14)


def test_batchnorm_statistics_change_only_in_the_real_forward(setup):
    model, objective, batch = setup(batchnorm=True)
    bn = model.trunk[1]
    before = {n: b.clone() for n, b in model.named_buffers()}
    assert set(before) == {"trunk.1.running_mean", "trunk.1.running_var", "trunk.1.num_batches_tracked"}
    objective.losses(batch, perturbed(model))
    objective.losses(batch, {n: p.detach() for n, p in model.named_parameters()})
    with torch.no_grad():
        objective.losses(batch, perturbed(model, seed=2))
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    objective.losses(batch)
    assert int(bn.num_batches_tracked) == 1
    assert not torch.equal(bn.running_mean, before["trunk.1.running_mean"])
    assert not torch.equal(bn.running_var, before["trunk.1.running_var"])


def test_dropout_replay_gives_the_masks_of_the_recorded_forward(setup, plain_losses):
    model, objective, batch = setup(dropout=0.5)
    own = {n: p.detach() for n, p in model.named_parameters()}
    rng = capture_rng(objective.device)
    real = objective.losses(batch).detach()
    # the same masks at the same parameters, as often as asked
    assert torch.equal(objective.losses(batch, own, rng), real)
    assert torch.equal(objective.losses(batch, own, rng), real)
    # without the random state, every evaluation draws new masks
    first, second = objective.losses(batch, own), objective.losses(batch, own)
    assert not torch.equal(first, second) and not torch.equal(first, real)
    # at other parameters: the masks a plain forward draws from that state
    other = perturbed(model)
    replayed = objective.losses(batch, other, rng)
    torch.set_rng_state(rng[0])
    torch.testing.assert_close(replayed, plain_losses(loaded_copy(model, other), batch, NAMES).detach())


def test_dropout_replay_leaves_the_global_random_state_alone(setup):
    model, objective, batch = setup(dropout=0.5)
    rng = capture_rng(objective.device)
    objective.losses(batch)
    state = torch.get_rng_state()
    objective.losses(batch, perturbed(model), rng)
    assert torch.equal(torch.get_rng_state(), state)


# --- multi-input tasks: batch {task: (x, y)}, model(x, task) ---

LR = 0.1


def dot(a, b):
    return sum(float((a[n] * b[n]).sum()) for n in a)


def sgd_moved(model, grads):
    """A copy of ``model`` after a plain SGD step θ - ``LR`` · grads."""
    return loaded_copy(model, {n: p.detach() - LR * grads[n] for n, p in model.named_parameters()})


def auto_lambda_hypergradient(model, batch, meta_batch, weighted_grads):
    """-α ⟨∇θ Lᵢ(θ; batch), ∇θ' Σ L(θ'; meta)⟩ with θ' = θ - α Σ 0.1 ∇θ L (plain SGD, λ = 0.1)."""

    def grads(at, b, weights):
        return weighted_grads(at, b, NAMES, weights, multi_input=True)

    v = grads(sgd_moved(model, grads(model, batch, [0.1] * 3)), meta_batch, [1.0] * 3)
    return torch.tensor([-LR * dot(grads(model, batch, torch.eye(3)[i]), v) for i in range(3)], dtype=torch.float64)


def hydalearn_gains(model, batch, weighted_grads, plain_losses):
    """L_a(θ) - L_a(θ - η ∇θ Lₖ(θ)) for every task k (main task "a", look-ahead gain)."""

    def main_loss(at):
        return float(plain_losses(at, batch, NAMES, multi_input=True)[0].detach())

    gains = []
    for k in range(3):
        g = weighted_grads(model, batch, NAMES, torch.eye(3)[k], multi_input=True)
        gains.append(main_loss(model) - main_loss(sgd_moved(model, g)))
    return torch.tensor(gains, dtype=torch.float64)


@pytest.fixture
def multi_input_step(make_model, make_batch, make_tasks, plain_losses, weighted_grads):
    """``multi_input_step(weighting, seed=0)`` takes one MultiTask step on multi-input tasks
    (model seed ``seed``, SGD with lr ``LR``), checks the losses and that the gradient is
    that of the weighted losses, and returns (model before the step, batch, meta batch,
    StepInfo)."""

    def run(weighting, seed=0):
        model = make_model(NAMES, seed=seed)
        before = copy.deepcopy(model)
        batch, meta_batch = (make_batch(NAMES, seed=s, multi_input=True) for s in (0, 1))
        tasks = make_tasks(NAMES, multi_input=True)
        mtl = dm.MultiTask(model, tasks, torch.optim.SGD(model.parameters(), lr=LR), weighting=weighting)
        info = mtl.step(batch, meta_batch=meta_batch)
        torch.testing.assert_close(info.losses, plain_losses(before, batch, NAMES, multi_input=True).detach())
        want = weighted_grads(before, batch, NAMES, info.weights, multi_input=True)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, want[n])
        return before, batch, meta_batch, info

    return run


def test_multi_input_equal(multi_input_step):
    info = multi_input_step(dm.Equal())[-1]
    torch.testing.assert_close(info.weights, torch.ones(3, dtype=torch.float64))


def test_multi_input_auto_lambda(multi_input_step, weighted_grads):
    weighting = dm.AutoLambda()
    model, batch, meta_batch, info = multi_input_step(weighting)
    want = auto_lambda_hypergradient(model, batch, meta_batch, weighted_grads)
    torch.testing.assert_close(weighting.last_hypergradient, want, rtol=1e-4, atol=0)
    assert torch.equal(info.weights, weighting.lambdas.detach()) and not bool((info.weights == 0.1).any())


def test_multi_input_hydalearn(multi_input_step, weighted_grads, plain_losses):
    weighting = dm.HydaLearn(main="a")
    model, batch, _, info = multi_input_step(weighting, seed=3)  # gains: one negative, two positive
    gains = hydalearn_gains(model, batch, weighted_grads, plain_losses)
    torch.testing.assert_close(weighting.last_gains, gains)
    assert (gains > 0).tolist() == [True, False, True]
    positive = gains.clamp(min=0)
    torch.testing.assert_close(info.weights, 3 * positive / positive.sum())

