"""The methods added from Jacobian descent and recent scalarisations, against TorchJD's.

Same Jacobians (or loss vectors) into both. Intended differences, avoided here:

* UPGrad and DualProj: TorchJD solves each projection with quadprog after normalising the
  Gram matrix by its trace and adding ``reg_eps`` (1e-4) to the diagonal; ours solves the
  same regularised problem with an active-set method: compared at the defaults and at
  ``reg_eps=0`` (TorchJD's projector then gets ``norm_eps=0, reg_eps=0``), where the
  problem is still strictly convex for independent rows;
* STCH: TorchJD's scalariser returns S(L); our weighting returns λ = ∂S/∂L, compared with
  the gradient of TorchJD's S; GLS likewise with TorchJD's ``GeometricMean``; IMTL-L's loss
  Σ e^{sᵢ}Lᵢ − sᵢ is compared, with its gradients in L and s.
"""

import pytest
import torch

torchjd = pytest.importorskip("torchjd", reason="TorchJD is an optional reference: pip install torchjd")
pytest.importorskip("qpsolvers", reason="TorchJD's UPGrad needs: pip install 'torchjd[quadprog-projector]'")
from torchjd import aggregation as jd  # noqa: E402
from torchjd import scalarization as jds  # noqa: E402
from torchjd.linalg import QuadprogProjector  # noqa: E402

import dynamtl as dm  # noqa: E402

F64 = torch.float64
SHAPES = [(2, 5, 0), (3, 8, 1), (4, 10, 2), (5, 3, 3), (3, 50, 4)]


def jacobian(rows, cols, seed, shift=-0.1):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=F64) + shift


@pytest.mark.parametrize(("rows", "cols", "seed"), SHAPES)
def test_upgrad_and_dualproj_at_the_defaults(rows, cols, seed):
    j = jacobian(rows, cols, seed)
    torch.testing.assert_close(dm.UPGrad().combine(j), jd.UPGrad()(j), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(dm.DualProj().combine(j), jd.DualProj()(j), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("rows", "cols", "seed"), [s for s in SHAPES if s[0] <= s[1]])
def test_upgrad_and_dualproj_unregularised_with_a_preference(rows, cols, seed):
    j = jacobian(rows, cols, seed)
    pref = torch.linspace(0.5, 2.0, rows, dtype=F64)
    exact = QuadprogProjector(norm_eps=0.0, reg_eps=0.0)
    torch.testing.assert_close(
        dm.UPGrad(pref=pref.tolist(), reg_eps=0.0).combine(j), jd.UPGrad(pref, projector=exact)(j), rtol=1e-7, atol=1e-9
    )
    torch.testing.assert_close(
        dm.DualProj(pref=pref.tolist(), reg_eps=0.0).combine(j),
        jd.DualProj(pref, projector=exact)(j),
        rtol=1e-7,
        atol=1e-9,
    )


@pytest.mark.parametrize(("rows", "cols", "seed"), SHAPES)
def test_config(rows, cols, seed):
    j = jacobian(rows, cols, seed)
    torch.testing.assert_close(dm.ConFIG().combine(j), jd.ConFIG()(j), rtol=1e-7, atol=1e-9)
    pref = torch.linspace(1.0, 3.0, rows, dtype=F64)
    torch.testing.assert_close(dm.ConFIG(pref=pref.tolist()).combine(j), jd.ConFIG(pref)(j), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize(("rows", "cols", "seed"), [s for s in SHAPES if s[0] <= s[1]])
def test_fairgrad(alpha, rows, cols, seed):
    pytest.importorskip("scipy", reason="TorchJD's FairGrad needs SciPy: pip install 'torchjd[fairgrad]'")
    j = jacobian(rows, cols, seed, shift=0.3)  # 0 must not be in the hull: a solution exists
    torch.testing.assert_close(dm.FairGrad(alpha=alpha).combine(j), jd.FairGrad(alpha=alpha)(j), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_cr_mogm_of_upgrad(beta):
    ours = dm.CRMOGM(dm.UPGrad(), beta=beta)
    theirs = jd.GramianWeightedAggregator(jd.CRMOGMWeighting(jd.UPGradWeighting(), alpha=beta))
    for step in range(4):
        j = jacobian(3, 7, step)
        torch.testing.assert_close(ours.combine(j), theirs(j), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("warmup", "their_warmup"), [(0, 1), (1, 1), (2, 2)])
def test_excess_mtl(warmup, their_warmup):
    """Ours takes no step on unscaled risks: warmup 0 and 1 are TorchJD's n_warmup_steps=1
    (the official code's behaviour; TorchJD's 0 steps on the first, unscaled risks)."""
    ours = dm.ExcessMTL(step_size=0.5, warmup=warmup)
    theirs = jd.ExcessMTLWeighting(robust_step_size=0.5, n_warmup_steps=their_warmup)
    for step in range(5):
        j = jacobian(3, 7, step)
        torch.testing.assert_close(ours.update(j), theirs(j))


def _gradient(scalarize, losses):
    values = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(scalarize(values), values)
    return grad


@pytest.mark.parametrize("mu", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("seed", range(3))
def test_stch_weights_are_the_gradient_of_torchjds_stch(mu, seed):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(4, generator=g, dtype=F64) * 3
    pref = torch.rand(4, generator=g, dtype=F64)
    ideal = torch.rand(4, generator=g, dtype=F64) * 0.1
    names = ["a", "b", "c", "d"]
    ours = dm.STCH(mu=mu).bind(names).loss_weights(losses)
    torch.testing.assert_close(ours, _gradient(jds.STCH(mu=mu), losses))
    ours = dm.STCH(mu=mu, preference=dict(zip(names, pref.tolist())), ideal=dict(zip(names, ideal.tolist())))
    torch.testing.assert_close(
        ours.bind(names).loss_weights(losses), _gradient(jds.STCH(mu=mu, weights=pref, reference=ideal), losses)
    )


@pytest.mark.parametrize("seed", range(3))
def test_gls_is_torchjds_geometric_mean(seed):
    losses = torch.rand(5, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.01
    gls = dm.GLS().bind(list("abcde"))
    torch.testing.assert_close(gls.loss_weights(losses), _gradient(jds.GeometricMean(), losses))
    torch.testing.assert_close(gls(losses), jds.GeometricMean()(losses))


def test_imtl_l_is_torchjds_imtl_l():
    losses = torch.tensor([0.5, 2.0, 7.0], dtype=F64)
    ours, theirs = dm.IMTLL(tasks=["a", "b", "c"]).double(), jds.IMTLL(3).double()
    with torch.no_grad():
        ours.log_scales.copy_(torch.tensor([0.3, -0.2, 1.0]))
        theirs.log_scale.copy_(torch.tensor([0.3, -0.2, 1.0]))
    a, b = losses.clone().requires_grad_(True), losses.clone().requires_grad_(True)
    value_ours, value_theirs = ours(a), theirs(b)
    torch.testing.assert_close(value_ours, value_theirs)
    value_ours.backward()
    value_theirs.backward()
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(ours.log_scales.grad, theirs.log_scale.grad)
