"""The loss-only weightings (Equal, Static, Uncertainty, DWA, RLW) against hand-computed
weights, both as ``loss = weighting(losses)`` and through :class:`dynamtl.MultiTask`."""

import io
import math

import pytest
import torch

import dynamtl as dm

NAMES = ("a", "b", "c")
LOSSES = (1.5, 0.75, 2.25)
LOG_VARS = (0.5, -0.25, 0.75)
F64 = torch.float64


def softmax_times_t(values):
    """T · softmax(values), by hand in float64."""
    e = [math.exp(v) for v in values]
    return torch.tensor([len(e) * x / sum(e) for x in e], dtype=F64)


def weights_of(weighting, losses):
    """The weights λ a loss weighting applies: the gradient of ``weighting(losses)`` wrt the losses."""
    losses = torch.tensor(losses, dtype=F64, requires_grad=True)
    return torch.autograd.grad(weighting(losses), losses)[0]


def through_file(state):
    """``state`` saved with ``torch.save`` and loaded back (with the default ``weights_only``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def feed_epochs(dwa, epochs):
    """Give DWA the loss vectors of every epoch, calling ``end_epoch`` after each."""
    for epoch in epochs:
        for losses in epoch:
            dwa(torch.tensor(losses, dtype=F64))
        dwa.end_epoch()


# Each case: (weighting, the weights it must give next, its regularizer's value).


def equal_case():
    return dm.Equal(), torch.ones(3, dtype=F64), 0.0


def static_case():
    # given in another order than the tasks: the weights follow the task order
    return dm.Static({"c": 1.5, "a": 0.5, "b": 2.0}), torch.tensor([0.5, 2.0, 1.5], dtype=F64), 0.0


def uncertainty_case():
    u = dm.Uncertainty(tasks=list(NAMES)).double()
    with torch.no_grad():
        u.log_vars.copy_(torch.tensor(LOG_VARS))
    expected = torch.tensor([0.5 * math.exp(-s) for s in LOG_VARS], dtype=F64)
    return u, expected, 0.5 * sum(LOG_VARS)


def dwa_case():
    dwa = dm.DWA().bind(NAMES)
    # epoch averages [3, 4, 2] then [1.5, 4, 4]: ratios r = [0.5, 1, 2], λ = 3 softmax(r / 2)
    feed_epochs(dwa, [[[2.0, 4.0, 1.0], [4.0, 4.0, 3.0]], [[1.5, 4.0, 4.0]]])
    return dwa, softmax_times_t([0.25, 0.5, 1.0]), 0.0


def rlw_case():
    z = torch.randn(3, generator=torch.Generator().manual_seed(7), dtype=F64)
    return dm.RLW(seed=7).bind(NAMES), softmax_times_t(z.tolist()), 0.0


@pytest.fixture(
    params=[equal_case, static_case, uncertainty_case, dwa_case, rlw_case],
    ids=["equal", "static", "uncertainty", "dwa", "rlw"],
)
def case(request):
    return request.param()


@pytest.mark.parametrize("as_mapping", [True, False], ids=["mapping", "vector"])
def test_callable_gives_weighted_sum(case, as_mapping):
    weighting, expected, regularizer = case
    losses = torch.tensor(LOSSES, dtype=F64, requires_grad=True)
    # a vector is in the order of the bound task names
    total = weighting(dict(zip(NAMES, losses.unbind()))) if as_mapping else weighting.bind(NAMES)(losses)
    want = sum(w * loss for w, loss in zip(expected.tolist(), LOSSES)) + regularizer
    assert total.item() == pytest.approx(want, rel=1e-12)
    # the weights are constants for the losses: d total / d L = λ
    torch.testing.assert_close(torch.autograd.grad(total, losses)[0], expected)


def test_multitask_step_gradient_is_that_of_hand_weighted_loss(
    case, make_model, make_batch, make_tasks, weighted_grads
):
    weighting, expected, _ = case
    model, batch = make_model(NAMES), make_batch(NAMES)
    want = weighted_grads(model, batch, NAMES, expected)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    info = dm.MultiTask(model, make_tasks(NAMES), opt, weighting=weighting).step(batch)
    torch.testing.assert_close(info.weights, expected)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name])


def test_callable_mapping_order_does_not_matter():
    static = dm.Static({"a": 1.0, "b": 2.0})
    first = static({"a": torch.tensor(3.0), "b": torch.tensor(5.0)})
    assert static({"b": torch.tensor(5.0), "a": torch.tensor(3.0)}) == first == 13.0


# --- Uncertainty ---


def test_uncertainty_gradient_wrt_log_variances():
    u, _, _ = uncertainty_case()
    u(torch.tensor(LOSSES, dtype=F64)).backward()
    want = [0.5 - 0.5 * math.exp(-s) * loss for s, loss in zip(LOG_VARS, LOSSES)]
    torch.testing.assert_close(u.log_vars.grad, torch.tensor(want, dtype=F64))


def test_uncertainty_gradient_vanishes_where_variance_equals_loss():
    u = dm.Uncertainty(tasks=list(NAMES)).double()
    with torch.no_grad():
        u.log_vars.copy_(torch.tensor(LOSSES, dtype=F64).log())
    u(torch.tensor(LOSSES, dtype=F64)).backward()
    torch.testing.assert_close(u.log_vars.grad, torch.zeros(3, dtype=F64))


def test_multitask_gives_log_variances_their_own_group_and_moves_them(make_model, make_batch, make_tasks, plain_losses):
    u, _, _ = uncertainty_case()
    model, batch = make_model(NAMES), make_batch(NAMES)
    losses = plain_losses(model, batch, NAMES).detach()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    mtl = dm.MultiTask(model, make_tasks(NAMES), opt, weighting=u)
    assert len(opt.param_groups) == 2
    group = opt.param_groups[1]
    assert group["params"] == [u.log_vars] and group["weight_decay"] == 0.0 and group["lr"] == 0.1
    mtl.step(batch)
    s0 = torch.tensor(LOG_VARS, dtype=F64)
    # one SGD step on ½e^{-s}L + ½s, without weight decay
    torch.testing.assert_close(u.log_vars.detach(), s0 - 0.1 * (0.5 - 0.5 * torch.exp(-s0) * losses))


def test_multitask_does_not_add_log_variances_the_optimizer_has(make_model, make_tasks):
    u = dm.Uncertainty(tasks=list(NAMES)).double()
    model = make_model(NAMES)
    opt = torch.optim.SGD([*model.parameters(), u.log_vars], lr=0.1)
    dm.MultiTask(model, make_tasks(NAMES), opt, weighting=u)
    assert len(opt.param_groups) == 1


def test_uncertainty_converges_to_variance_equal_to_loss(make_model, make_batch, make_tasks, plain_losses):
    model, batch = make_model(NAMES), make_batch(NAMES)
    # the model's group has lr 0, so the losses stay fixed; the log-variances' group gets lr 0.5
    opt = torch.optim.SGD([{"params": model.parameters(), "lr": 0.0}], lr=0.5)
    u = dm.Uncertainty()
    mtl = dm.MultiTask(model, make_tasks(NAMES), opt, weighting=u)
    for _ in range(100):
        mtl.step(batch)
    torch.testing.assert_close(u.log_vars.detach().exp(), plain_losses(model, batch, NAMES).detach())


# --- DWA ---


@pytest.mark.parametrize("temperature", [2.0, 0.5])
def test_dwa_weights_by_epoch(temperature):
    dwa = dm.DWA(temperature=temperature).bind(NAMES)
    ones = torch.ones(3, dtype=F64)
    epochs = [
        [[2.0, 4.0, 1.0], [4.0, 4.0, 3.0]],  # average [3, 4, 2]
        [[1.5, 4.0, 4.0]],  # average [1.5, 4, 4]
        [[0.75, 2.0, 4.0], [0.75, 6.0, 4.0]],  # average [0.75, 4, 4]
    ]
    want = [
        ones,
        ones,
        softmax_times_t([r / temperature for r in (1.5 / 3, 4 / 4, 4 / 2)]),
        softmax_times_t([r / temperature for r in (0.75 / 1.5, 4 / 4, 4 / 4)]),
    ]
    for epoch, expected in zip([*epochs, [LOSSES]], want):
        for losses in epoch:
            torch.testing.assert_close(weights_of(dwa, losses), expected)
        dwa.end_epoch()


def test_dwa_through_multitask_end_epoch(make_model, make_batch, make_tasks, plain_losses, weighted_grads):
    model = make_model(NAMES)
    batches = [make_batch(NAMES, seed=s) for s in (1, 2)]
    mtl = dm.MultiTask(model, make_tasks(NAMES), torch.optim.SGD(model.parameters(), lr=0.05), weighting=dm.DWA())
    averages = []
    for _ in range(2):
        seen = []
        for batch in batches:
            seen.append(plain_losses(model, batch, NAMES).detach())
            torch.testing.assert_close(mtl.step(batch).weights, torch.ones(3, dtype=F64))
        averages.append(torch.stack(seen).mean(0))
        mtl.end_epoch()
    expected = softmax_times_t((averages[1] / averages[0] / 2).tolist())
    want = weighted_grads(model, batches[0], NAMES, expected)
    info = mtl.step(batches[0])
    torch.testing.assert_close(info.weights, expected)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name])


# --- RLW ---


def test_rlw_weights_are_positive_sum_to_t_and_vary():
    rlw = dm.RLW(seed=1).bind(NAMES)
    draws = torch.stack([weights_of(rlw, LOSSES) for _ in range(20)])
    assert bool((draws > 0).all())
    torch.testing.assert_close(draws.sum(1), torch.full((20,), 3.0, dtype=F64))
    assert len({tuple(d.tolist()) for d in draws}) == 20


def test_rlw_is_repeatable_by_seed_and_leaves_global_rng_alone():
    def sequence(seed):
        rlw = dm.RLW(seed=seed).bind(NAMES)
        return torch.stack([weights_of(rlw, LOSSES) for _ in range(5)])

    global_state = torch.get_rng_state()
    first = sequence(3)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(sequence(3), first)
    assert not torch.allclose(sequence(4), first)


def test_rlw_state_dict_continues_the_sequence():
    rlw = dm.RLW(seed=3).bind(NAMES)
    start = [weights_of(rlw, LOSSES) for _ in range(3)]
    state = through_file(rlw.state_dict())
    rest = [weights_of(rlw, LOSSES) for _ in range(3)]
    resumed = dm.RLW(seed=99).bind(NAMES)
    resumed.load_state_dict(state)
    assert all(torch.equal(weights_of(resumed, LOSSES), w) for w in rest)
    assert not torch.allclose(rest[0], start[0])


# --- state dicts through MultiTask ---


@pytest.mark.parametrize(
    "make_weighting", [dm.DWA, dm.Uncertainty, lambda: dm.RLW(seed=5)], ids=["dwa", "uncertainty", "rlw"]
)
def test_multitask_state_dict_round_trip_continues_identically(make_weighting, make_model, make_batch, make_tasks):
    batches = [make_batch(NAMES, seed=s) for s in range(3)]

    def build():
        model = make_model(NAMES)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, dm.MultiTask(model, make_tasks(NAMES), opt, weighting=make_weighting())

    model, opt, mtl = build()
    for _ in range(3):  # three epochs, so that DWA's weights are no longer 1
        for batch in batches[:2]:
            mtl.step(batch)
        mtl.end_epoch()
    mtl.step(batches[2])  # and a partial epoch
    model2, opt2, mtl2 = build()
    model2.load_state_dict(through_file(model.state_dict()))
    opt2.load_state_dict(through_file(opt.state_dict()))
    mtl2.load_state_dict(through_file(mtl.state_dict()))
    for _ in range(2):
        for batch in batches:
            a, b = mtl.step(batch), mtl2.step(batch)
            assert torch.equal(a.weights, b.weights) and torch.equal(a.losses, b.losses)
        mtl.end_epoch()
        mtl2.end_epoch()
    assert not torch.equal(a.weights, torch.ones(3, dtype=F64))
    assert mtl2.steps == mtl.steps == 13
