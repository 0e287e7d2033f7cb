"""The gradient aggregations against their defining properties and independent computations
(float64), their state dicts, and one training step of each through :class:`dynamtl.MultiTask`."""

import copy
import itertools
import logging
import sys

import numpy as np
import pytest
import torch

import dynamtl as dm
from dynamtl.aggregation.aligned_mtl import AlignedMTL
from dynamtl.aggregation.cagrad import CAGrad
from dynamtl.aggregation.graddrop import GradDrop
from dynamtl.aggregation.gradvac import GradVac
from dynamtl.aggregation.imtl_g import IMTLG
from dynamtl.aggregation.mgda import MGDA
from dynamtl.aggregation.nash_mtl import NashMTL
from dynamtl.aggregation.pcgrad import PCGrad

F64 = torch.float64
ALL = {
    "PCGrad": PCGrad,
    "GradDrop": GradDrop,
    "CAGrad": CAGrad,
    "MGDA": MGDA,
    "MGDA-frank-wolfe": lambda: MGDA(solver="frank-wolfe"),
    "IMTLG": IMTLG,
    "NashMTL": NashMTL,
    "AlignedMTL": AlignedMTL,
    "GradVac": GradVac,
}


def jacobian(rows, cols, seed):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=F64)


def row_weights(j, d):
    """α with Jᵀα = d (J of full row rank), by least squares."""
    return torch.linalg.lstsq(j.T, d.unsqueeze(1)).solution.squeeze(1)


def conflicting_pair():
    return torch.tensor([[1.0, 0.5, -0.2], [-2.0, 1.0, 0.3]], dtype=F64)


# ----------------------------------------------------------------------------- PCGrad


def project(g, onto):
    """g projected on the normal plane of ``onto`` when they conflict."""
    dot = g @ onto
    return g - dot / (onto @ onto) * onto if dot < 0 else g


def test_pcgrad_two_tasks_matches_the_projections_and_leaves_no_conflict():
    j = conflicting_pair()
    g1, g2 = j
    p1, p2 = project(g1, g2), project(g2, g1)
    d = PCGrad().combine(j)
    torch.testing.assert_close(d, p1 + p2)
    assert p1 @ g2 == pytest.approx(0.0, abs=1e-12) and p2 @ g1 == pytest.approx(0.0, abs=1e-12)
    assert p1 @ p2 >= 0 and d @ g1 > 0 and d @ g2 > 0


def test_pcgrad_without_conflict_is_the_sum():
    j = jacobian(4, 6, 0).abs()  # all pairwise products positive
    torch.testing.assert_close(PCGrad().combine(j), j.sum(0))


def test_pcgrad_three_tasks_follows_one_of_the_random_orders():
    j = torch.tensor([[1.0, 0.0, 0.2], [-0.6, 1.0, 0.0], [-0.5, -0.8, 1.0]], dtype=F64)
    candidates = []
    for orders in itertools.product(*[list(itertools.permutations([k for k in range(3) if k != i])) for i in range(3)]):
        total = torch.zeros(3, dtype=F64)
        for i, order in enumerate(orders):
            g = j[i].clone()
            for k in order:
                g = project(g, j[k])
            total += g
        candidates.append(total)
    seen = set()
    for seed in range(12):
        d = PCGrad(seed=seed).combine(j)
        matches = [c for c in candidates if torch.allclose(d, c, atol=1e-12)]
        assert matches, f"seed {seed}: {d} is no PCGrad result"
        seen.add(tuple(round(x, 9) for x in d.tolist()))
    assert len(seen) > 1  # the order is random, and it matters here


# ----------------------------------------------------------------------------- MGDA


def grid_min_norm(j, steps):
    """The shortest Σ αᵢ gᵢ over a grid of the simplex (2 or 3 rows)."""
    t = j.shape[0]
    points = [(a, steps - a) for a in range(steps + 1)] if t == 2 else [
        (a, b, steps - a - b) for a in range(steps + 1) for b in range(steps + 1 - a)
    ]
    alphas = torch.tensor(points, dtype=F64) / steps
    vectors = alphas @ j
    return vectors[vectors.norm(dim=1).argmin()]


@pytest.mark.parametrize("solver", ["exact", "frank-wolfe"])
@pytest.mark.parametrize("shape,seed", [((2, 2), 1), ((2, 3), 2), ((3, 2), 3), ((3, 3), 4), ((3, 3), 5)])
def test_mgda_is_the_min_norm_point_of_the_convex_hull(solver, shape, seed):
    j = jacobian(*shape, seed)
    # Frank-Wolfe converges sublinearly (it zig-zags when the optimum is on a face): looser
    exact = solver == "exact"
    d = (MGDA() if exact else MGDA(solver=solver, tol=1e-9, max_iters=20_000)).combine(j)
    best = grid_min_norm(j, 400)
    assert d.norm() <= best.norm() + (1e-9 if exact else 1e-3 * j.norm())
    assert (d - best).norm() < (5e-3 if exact else 3e-2) * j.norm()
    # optimality: every gᵢ·d ≥ ‖d‖² (a common descent direction, exactly the min-norm point)
    assert torch.all(j @ d >= d @ d - (1e-9 if exact else 1e-4) * j.norm() ** 2)
    alpha = torch.linalg.lstsq(j.T, d.unsqueeze(1)).solution.squeeze(1) if shape[0] <= shape[1] else None
    if alpha is not None:
        assert alpha.sum() == pytest.approx(1.0, abs=1e-6) and torch.all(alpha >= -1e-6)


def test_mgda_is_zero_when_zero_is_in_the_hull_and_skips_zero_rows():
    j = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(MGDA().combine(j), torch.zeros(2, dtype=F64))
    with_zero = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]], dtype=F64)
    torch.testing.assert_close(MGDA().combine(with_zero), torch.tensor([1.0, 1.0], dtype=F64))


def test_mgda_l2_normalisation_computes_alpha_on_unit_rows_and_applies_it_to_the_rows():
    j = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(MGDA(normalize="l2").combine(j), torch.tensor([1.5, 0.5], dtype=F64))
    # without normalisation the shorter row dominates: α = (1/10, 9/10)
    torch.testing.assert_close(MGDA().combine(j), torch.tensor([0.3, 0.9], dtype=F64))


def test_mgda_warns_once_when_the_solver_stops_early(caplog):
    mgda = MGDA(solver="frank-wolfe", max_iters=1)
    j = jacobian(3, 5, 6)
    with caplog.at_level(logging.WARNING, logger="dynamtl"):
        mgda.combine(j)
        mgda.combine(j)
    assert len([r for r in caplog.records if "did not converge" in r.message]) == 1


def test_mgda_rejects_unknown_options():
    with pytest.raises(ValueError, match="solver must be one of"):
        MGDA(solver="cvx")
    with pytest.raises(ValueError, match="normalize must be one of"):
        MGDA(normalize="loss")


# ----------------------------------------------------------------------------- CAGrad


@pytest.mark.parametrize("rescale", [True, False])
def test_cagrad_with_c_zero_is_the_mean(rescale):
    j = jacobian(3, 7, 7)
    torch.testing.assert_close(CAGrad(c=0.0, rescale=rescale).combine(j), j.mean(0))


def primal_cagrad(j, c):
    """max_d min_i gᵢ·d s.t. ‖d − g₀‖ ≤ c‖g₀‖, solved directly in the parameter space."""
    from scipy.optimize import minimize

    g = j.numpy()
    g0 = g.mean(0)
    radius2 = c**2 * g0 @ g0
    x0 = np.concatenate([g0, [min(g @ g0)]])
    result = minimize(
        lambda x: -x[-1],
        x0,
        method="SLSQP",
        constraints=[
            {"type": "ineq", "fun": lambda x: g @ x[:-1] - x[-1]},
            {"type": "ineq", "fun": lambda x: radius2 - (x[:-1] - g0) @ (x[:-1] - g0)},
        ],
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    assert result.success
    return torch.from_numpy(result.x[:-1])


@pytest.mark.parametrize("c,seed", [(0.4, 8), (0.8, 9), (0.25, 10)])
def test_cagrad_solves_the_primal_maximin_problem(c, seed):
    j = jacobian(3, 4, seed)
    d = CAGrad(c=c, rescale=False).combine(j)
    expected = primal_cagrad(j, c)
    torch.testing.assert_close(d, expected, atol=1e-5, rtol=1e-5)
    g0 = j.mean(0)
    assert float((d - g0).norm()) == pytest.approx(c * float(g0.norm()), rel=1e-6)
    torch.testing.assert_close(CAGrad(c=c).combine(j), d / (1 + c**2))


def test_cagrad_one_task_and_the_missing_scipy_hint(monkeypatch):
    g = torch.tensor([[3.0, 4.0]], dtype=F64)
    torch.testing.assert_close(CAGrad(c=0.5, rescale=False).combine(g), 1.5 * g[0])
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(ImportError, match=r"pip install 'dynamtl\[solvers\]'"):
        CAGrad(c=0.5).combine(jacobian(2, 3, 0))
    torch.testing.assert_close(CAGrad(c=0.0).combine(g), g[0])  # c = 0 needs no SciPy


def test_cagrad_rejects_a_negative_c():
    with pytest.raises(ValueError, match="must be >= 0"):
        CAGrad(c=-0.1)


# ----------------------------------------------------------------------------- IMTL-G


@pytest.mark.parametrize("shape,seed", [((2, 4), 11), ((3, 5), 12), ((4, 9), 13)])
def test_imtlg_projections_on_the_unit_gradients_are_equal(shape, seed):
    j = jacobian(*shape, seed) * torch.tensor([1.0, 5.0, 0.2, 2.0][: shape[0]], dtype=F64).unsqueeze(1)
    d = IMTLG().combine(j)
    projections = (j / j.norm(dim=1, keepdim=True)) @ d
    torch.testing.assert_close(projections, projections.mean().expand(shape[0]))
    assert row_weights(j, d).sum() == pytest.approx(1.0, abs=1e-9)  # d is in the affine hull


def test_imtlg_gives_zero_weight_to_zero_rows():
    j = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]], dtype=F64)
    torch.testing.assert_close(IMTLG().combine(j), torch.tensor([0.75, 0.75], dtype=F64))


# ----------------------------------------------------------------------------- Nash-MTL


@pytest.mark.parametrize("shape,seed", [((2, 3), 14), ((3, 5), 15), ((5, 8), 16)])
def test_nash_mtl_weights_satisfy_the_bargaining_condition(shape, seed):
    j = jacobian(*shape, seed) + 1.0  # 0 is not in the hull
    d = NashMTL(tol=1e-10).combine(j)
    alpha = row_weights(j, d)
    assert torch.all(alpha > 0)
    torch.testing.assert_close(alpha * (j @ j.T @ alpha), torch.ones(shape[0], dtype=F64))
    torch.testing.assert_close(j @ d, 1 / alpha)  # gᵢ·d = 1/αᵢ


def test_nash_mtl_is_invariant_to_row_scales_and_leaves_out_zero_rows():
    j = jacobian(3, 5, 17) + 1.0
    d = NashMTL(tol=1e-12).combine(j)
    scaled = j * torch.tensor([[0.1], [3.0], [1.0]], dtype=F64)
    torch.testing.assert_close(NashMTL(tol=1e-12).combine(scaled), d)
    off = torch.cat([j[:2], torch.zeros(1, 5, dtype=F64)])
    torch.testing.assert_close(NashMTL(tol=1e-12).combine(off), NashMTL(tol=1e-12).combine(j[:2]))


def test_nash_mtl_update_every_reuses_alpha_and_max_norm_clips():
    j1, j2 = jacobian(2, 4, 18) + 1.0, jacobian(2, 4, 19) + 1.0
    nash = NashMTL(update_every=2)
    nash.combine(j1)
    alpha = nash.alpha.clone()
    torch.testing.assert_close(nash.combine(j2), alpha @ j2)
    assert not torch.allclose(NashMTL().combine(j2), alpha @ j2)
    d = NashMTL().combine(j1)
    torch.testing.assert_close(NashMTL(max_norm=0.5 * float(d.norm())).combine(j1), 0.5 * d)


def test_nash_mtl_falls_back_with_a_warning_when_zero_is_in_the_hull(caplog):
    j = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], dtype=F64)
    with caplog.at_level(logging.WARNING, logger="dynamtl"):
        d = NashMTL().combine(j)
    assert any("NashMTL" in r.message for r in caplog.records)
    torch.testing.assert_close(d, torch.zeros(2, dtype=F64))  # Σ gᵢ/‖gᵢ‖ = e₁ − e₁


# ----------------------------------------------------------------------------- GradDrop


def test_graddrop_with_identical_rows_returns_their_sum():
    row = jacobian(1, 500, 20)
    j = row.expand(3, 500)
    for seed in range(3):
        torch.testing.assert_close(GradDrop(seed=seed).combine(j), 3 * row[0])
    zeros = torch.zeros(2, 4, dtype=F64)  # no sign purity where every row is 0: still 0, not NaN
    torch.testing.assert_close(GradDrop().combine(zeros), zeros[0])
    torch.testing.assert_close(GradDrop(f=torch.ones_like, leak=0.5).combine(zeros), zeros[0])


def test_graddrop_keeps_one_sign_per_coordinate_with_probability_p():
    n = 20000
    j = torch.tensor([[3.0], [-1.0]], dtype=F64).expand(2, n)  # P = 3 / (3 + 1) = 0.75
    d = GradDrop(seed=1).combine(j)
    assert set(d.unique().tolist()) <= {3.0, -1.0}
    assert (d == 3.0).double().mean().item() == pytest.approx(0.75, abs=0.015)
    always = GradDrop(f=torch.ones_like).combine(j)  # f(P) = 1 > U: positive signs always win
    torch.testing.assert_close(always, torch.full((n,), 3.0, dtype=F64))


def test_graddrop_leak():
    j = jacobian(2, 50, 21)
    torch.testing.assert_close(GradDrop(leak=1.0).combine(j), j.sum(0))
    half = GradDrop(leak=[1.0, 0.0], seed=4).combine(j)
    # task 0 passes whole; task 1 keeps the sign that the purity of *both* rows picks
    positive = j.clamp(min=0).sum(0) / j.abs().sum(0)
    uniform = torch.rand(50, generator=torch.Generator().manual_seed(4), dtype=F64)
    keep = torch.where(positive > uniform, j[1].clamp(min=0), j[1].clamp(max=0))
    torch.testing.assert_close(half, j[0] + keep)
    with pytest.raises(ValueError, match="one value per task"):
        GradDrop(leak=[0.1, 0.2, 0.3]).combine(j)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        GradDrop(leak=1.5)


# ----------------------------------------------------------------------------- Aligned-MTL


@pytest.mark.parametrize("scale", ["min", "median", "mean"])
def test_aligned_mtl_rows_are_orthogonal_with_equal_norms(scale):
    j = jacobian(3, 6, 22) * torch.tensor([[1.0], [4.0], [0.3]], dtype=F64)
    aligned = torch.stack([AlignedMTL(scale=scale, pref=np.eye(3)[k].tolist()).combine(j) for k in range(3)])
    eigenvalues = torch.linalg.eigvalsh(j @ j.T)
    sigma2 = {"min": eigenvalues.min(), "median": eigenvalues.median(), "mean": eigenvalues.mean()}[scale]
    torch.testing.assert_close(aligned @ aligned.T, sigma2 * torch.eye(3, dtype=F64))
    # Ĵ = σ U Wᵀ from the SVD J = U Σ Wᵀ
    u, _, wt = torch.linalg.svd(j, full_matrices=False)
    torch.testing.assert_close(aligned, sigma2.sqrt() * u @ wt)
    torch.testing.assert_close(AlignedMTL(scale=scale).combine(j), aligned.mean(0))


def test_aligned_mtl_rank_deficient_and_pref_checks():
    j = torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    # the zero row is left out; on the other two, rank 1, G = 25 V Vᵀ with V = (1, 2)/√5:
    # B = V Vᵀ and d = Jᵀ V Vᵀ (1/2)1 = 0.3 J₀ + 0.6 J₁ = (1.5, 3, 0)
    torch.testing.assert_close(AlignedMTL().combine(j), torch.tensor([1.5, 3.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="one value per task"):
        AlignedMTL(pref=[1.0, 0.0]).combine(j)
    with pytest.raises(ValueError, match="scale must be one of"):
        AlignedMTL(scale="rmse")


# ----------------------------------------------------------------------------- GradVac


def test_gradvac_with_all_cosines_above_target_is_the_sum():
    j = jacobian(4, 6, 23).abs()  # all cosines > 0 = initial targets
    torch.testing.assert_close(GradVac().combine(j), j.sum(0))


def test_gradvac_raises_the_cosine_to_its_target_and_updates_the_ema():
    j = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=F64)  # cosine 0
    vac = GradVac(beta=0.25)
    vac.set_extra_state({"targets": torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=F64), "generator": None})
    d = vac.combine(j)
    # with 2 tasks: g₁' = g₁ + w₁ g₂, g₂' = g₂ + w₂ g₁, each with cosine 0.5 to the other row
    alpha = row_weights(j, d)
    g1, g2 = j[0] + (alpha[1] - 1) * j[1], j[1] + (alpha[0] - 1) * j[0]
    cos = torch.nn.functional.cosine_similarity
    assert cos(g1, j[1], dim=0).item() == pytest.approx(0.5) and cos(g2, j[0], dim=0).item() == pytest.approx(0.5)
    assert vac.targets == [[0.0, 0.75 * 0.5], [0.75 * 0.5, 0.0]]


def test_gradvac_rejects_a_bad_beta():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        GradVac(beta=2.0)


# ----------------------------------------------------------------------------- all of them


@pytest.mark.parametrize("name", ["PCGrad", "GradDrop", "GradVac", "NashMTL"])
def test_state_dict_round_trip_continues_identically(name):
    agg = ALL[name]()
    jacobians = [jacobian(3, 40, 30 + k) + (1.0 if name == "NashMTL" else 0.0) for k in range(4)]
    for j in jacobians[:2]:
        agg.combine(j)
    saved = copy.deepcopy(agg.state_dict())
    assert "_extra_state" in saved
    expected = [agg.combine(j) for j in jacobians[2:]]
    fresh = ALL[name]()
    fresh.load_state_dict(saved)
    for j, e in zip(jacobians[2:], expected):
        torch.testing.assert_close(fresh.combine(j), e, rtol=0, atol=0)


def test_a_fresh_aggregation_differs_from_a_continued_one():
    """The state round trip above is not trivial: the state changes what comes next."""
    j = jacobian(3, 40, 40)
    used = GradDrop()
    used.combine(j)
    assert not torch.equal(used.combine(j), GradDrop().combine(j))


@pytest.mark.parametrize("name", list(ALL))
def test_combine_rejects_a_vector(name):
    with pytest.raises(ValueError, match=r"matrix \[T, D\]"):
        ALL[name]().combine(torch.ones(3))


def expected_step(agg_factory, model, batch, names, lam, weighted_grads):
    """Heads: λₖ∇Lₖ of their own task; trunk: a fresh aggregation's combine of the weighted
    trunk gradients, all computed without dynamtl's step."""
    per_task = [weighted_grads(model, batch, names, [lam[k] if i == k else 0.0 for i in range(2)]) for k in range(2)]
    trunk = ["trunk.0.weight", "trunk.0.bias"]
    rows = torch.stack([torch.cat([per_task[k][n].reshape(-1) for n in trunk]) for k in range(2)])
    flat = agg_factory().combine(rows).split([per_task[0][n].numel() for n in trunk])
    expected = {n: f.reshape(per_task[0][n].shape) for n, f in zip(trunk, flat)}
    for k, task in enumerate(names):
        expected.update({f"heads.{task}.{s}": per_task[k][f"heads.{task}.{s}"] for s in ("weight", "bias")})
    return expected


@pytest.mark.parametrize("name", list(ALL))
def test_one_training_step_gives_heads_their_own_weighted_gradient(
    name, make_model, make_batch, make_tasks, weighted_grads
):
    names, lam = ("a", "b"), (0.7, 1.3)
    model, batch = make_model(names), make_batch(names)
    expected = expected_step(ALL[name], model, batch, names, lam, weighted_grads)
    mtl = dm.MultiTask(model, make_tasks(names), torch.optim.SGD(model.parameters(), lr=0.1),
                       weighting=dm.Static(dict(zip(names, lam))), aggregation=ALL[name]())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mtl.step(batch)
    for n, p in model.named_parameters():
        assert torch.isfinite(p.grad).all()
        torch.testing.assert_close(p.grad, expected[n])
        torch.testing.assert_close(p.detach(), before[n] - 0.1 * expected[n])
