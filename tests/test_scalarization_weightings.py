"""STCH, GLS and IMTL-L against their defining scalarisations: the weights are the gradient
of the scalarised loss (checked with autograd in float64), the limits and special cases hold,
and bad losses or options are refused with the task named."""

import math

import pytest
import torch
import torch.nn.functional as F

import dynamtl as dm

F64 = torch.float64
NAMES = ["a", "b", "c"]


def autograd_weights(scalarization, losses):
    values = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(scalarization(values), values)
    return grad


@pytest.mark.parametrize("mu", [0.01, 0.3, 1.0, 10.0])
@pytest.mark.parametrize("seed", range(3))
def test_stch_weights_are_the_gradient_of_the_smooth_maximum(mu, seed):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(3, generator=g, dtype=F64) * 4
    pref, ideal = torch.rand(3, generator=g, dtype=F64), torch.rand(3, generator=g, dtype=F64) * 0.2
    stch = dm.STCH(mu=mu, preference=dict(zip(NAMES, pref.tolist())), ideal=dict(zip(NAMES, ideal.tolist())))
    stch.bind(NAMES)
    expected = autograd_weights(lambda v: mu * torch.logsumexp(pref * (v - ideal) / mu, dim=0), losses)
    torch.testing.assert_close(stch.loss_weights(losses), expected)


def test_stch_tends_to_the_weighted_maximum_and_to_the_mean():
    losses = torch.tensor([1.0, 3.0, 2.0], dtype=F64)
    sharp = dm.STCH(mu=1e-3).bind(NAMES).loss_weights(losses)
    torch.testing.assert_close(sharp, torch.tensor([0.0, 1 / 3, 0.0], dtype=F64), atol=1e-9, rtol=0)
    flat = dm.STCH(mu=1e6).bind(NAMES).loss_weights(losses)
    torch.testing.assert_close(flat, torch.full((3,), 1 / 9, dtype=F64), atol=1e-6, rtol=0)
    huge = dm.STCH(mu=1e-3).bind(NAMES).loss_weights(torch.tensor([1e4, 2e4, 0.0], dtype=F64))
    assert torch.isfinite(huge).all()


def test_stch_refuses_bad_options():
    with pytest.raises(ValueError, match=r"STCH's option mu must be > 0 and finite, got 0\.0"):
        dm.STCH(mu=0.0)
    with pytest.raises(ValueError, match="option preference must hold numbers >= 0"):
        dm.STCH(preference={"a": -1.0})
    with pytest.raises(ValueError, match=r"STCH's option ideal names task\(s\) \['z'\] that are not among the tasks"):
        dm.STCH(ideal={"z": 0.0}).bind(NAMES)
    with pytest.raises(ValueError, match=r"option preference holds task weights that scale .*not all 0"):
        dm.STCH(preference={"a": 0.0})


@pytest.mark.parametrize("seed", range(3))
def test_gls_is_the_geometric_mean(seed):
    losses = torch.rand(4, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.05
    gls = dm.GLS().bind(list("abcd"))
    def geometric(v):
        return torch.prod(v) ** (1 / 4)

    torch.testing.assert_close(gls(losses), geometric(losses))
    torch.testing.assert_close(gls.loss_weights(losses), autograd_weights(geometric, losses))
    many = torch.full((400,), 1e-3, dtype=F64)  # the plain product would underflow to 0
    torch.testing.assert_close(dm.GLS().bind([str(i) for i in range(400)])(many), torch.tensor(1e-3, dtype=F64))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_gls_names_the_task_with_a_loss_it_cannot_take(bad):
    with pytest.raises(ValueError, match=r"needs every loss > 0 and finite; got \{'b': "):
        dm.GLS().bind(NAMES).loss_weights(torch.tensor([1.0, bad, 2.0]))


def test_imtl_l_scales_move_towards_the_inverse_losses():
    """∂/∂sᵢ (e^{sᵢ}Lᵢ − sᵢ) = e^{sᵢ}Lᵢ − 1: at fixed losses, gradient descent on s drives
    every scaled loss e^{sᵢ}Lᵢ to 1."""
    losses = torch.tensor([0.5, 2.0, 8.0], dtype=F64)
    w = dm.IMTLL(tasks=NAMES).double()
    optimizer = torch.optim.SGD(w.parameters(), lr=0.1)
    for _ in range(400):
        optimizer.zero_grad()
        w(losses).backward()
        optimizer.step()
    torch.testing.assert_close(w.loss_weights(losses) * losses, torch.ones(3, dtype=F64), rtol=1e-6, atol=1e-6)


def test_imtl_l_trains_its_scales_with_the_models_optimizer_and_composes_with_imtl_g(make_model):
    net = make_model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    weighting = dm.IMTLL()
    tasks = dm.Tasks({"a": F.mse_loss, "b": F.mse_loss})
    mtl = dm.MultiTask(net, tasks, optimizer, weighting=weighting, aggregation=dm.IMTLG())
    x = torch.randn(16, 4, dtype=F64)
    batch = (x, {"a": x.sum(1), "b": 10 * x[:, 0]})
    info = mtl.step(batch)
    assert any(weighting.log_scales is p for g in optimizer.param_groups for p in g["params"])
    # one SGD step on s from 0: s ← −0.1 (Lᵢ − 1)
    torch.testing.assert_close(weighting.log_scales.detach(), -0.1 * (info.losses - 1.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_stch_never_overflows_into_nan_weights(dtype):
    """Scores p(L − z)/μ beyond the dtype's range (float16: 65504) must give the limit, the
    weight on the largest score, not NaN; half-precision losses give float32 weights."""
    losses = torch.tensor([5.0, 2000.0, 1.0], dtype=dtype)
    weights = dm.STCH(mu=0.01).bind(NAMES).loss_weights(losses)
    assert weights.dtype == (torch.float64 if dtype == F64 else torch.float32)
    torch.testing.assert_close(weights, torch.tensor([0.0, 1 / 3, 0.0]), rtol=0, atol=1e-6)
    total = dm.STCH(mu=0.01).bind(NAMES)(losses.clone().requires_grad_(True))
    assert torch.isfinite(total)
    extreme = dm.STCH(mu=1e-30, preference={"a": 1e30, "b": 1.0, "c": 1e-30}).bind(NAMES)
    weights = extreme.loss_weights(torch.tensor([1e30, 3e38, 1.0], dtype=torch.float32))
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.tensor([1e30, 0.0, 0.0]))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_stch_names_the_task_with_a_non_finite_loss(bad):
    with pytest.raises(ValueError, match=r"needs every loss finite; got \{'b': "):
        dm.STCH().bind(NAMES).loss_weights(torch.tensor([1.0, bad, 2.0]))
    with pytest.raises(ValueError, match=r"got \{'b': "):
        dm.STCH().bind(NAMES)({"a": torch.tensor(1.0), "b": torch.tensor(bad), "c": torch.tensor(2.0)})
    absent = torch.tensor([True, False, True])  # an absent task's value is not used
    assert dm.STCH().bind(NAMES).loss_weights(torch.tensor([1.0, bad, 2.0]), absent)[1] == 0


def test_loss_weightings_called_on_half_precision_losses_weigh_in_float32():
    """GLS's S/(T·Lᵢ) of a small float16 loss is beyond 65504: ``w(losses)`` computes λ in
    float32 (as a MultiTask step does), so the total is finite."""
    losses = torch.tensor([1e-7, 6e4], dtype=torch.float16)
    total = dm.GLS().bind(["a", "b"])(losses)
    assert torch.isfinite(total)
    torch.testing.assert_close(total.float(), (losses.float().prod()) ** 0.5, rtol=2e-3, atol=0)
