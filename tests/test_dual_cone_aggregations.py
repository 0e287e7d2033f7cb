"""UPGrad, DualProj and ConFIG against their defining properties, on small float64 Jacobians:
the update conflicts with no task (dual cone), the weights satisfy the optimality conditions
of their quadratic programmes, the special cases reduce to known updates, and degenerate or
bad inputs are handled as documented."""

import itertools

import pytest
import torch

import dynamtl as dm
from dynamtl.aggregation._dual_cone import dual_cone_weights

F64 = torch.float64
SHAPES = [(2, 5), (3, 8), (4, 10), (5, 3), (6, 2)]  # the last two: more tasks than dimensions


def jacobian(rows, cols, seed, shift=0.0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=F64) + shift


def assert_kkt(gram, u, v, atol=1e-10):
    """v = argmin_{v ≥ u} vᵀGv: feasible, Gv ≥ 0, and complementary slackness."""
    products = gram @ v
    scale = float(gram.abs().max()) * float(v.abs().max() + 1)
    assert bool((v >= u - atol).all())
    assert bool((products >= -atol * scale).all())
    assert float(((v - u) * products).abs().max()) <= atol * scale


@pytest.mark.parametrize(("rows", "cols"), SHAPES)
@pytest.mark.parametrize("seed", range(4))
def test_the_dual_cone_solver_meets_the_optimality_conditions(rows, cols, seed):
    j = jacobian(rows, cols, seed)
    gram = j @ j.T
    for u in [torch.full((rows,), 1.0 / rows, dtype=F64), *torch.eye(rows, dtype=F64)]:
        v, converged = dual_cone_weights(gram, u, max_iters=100)
        assert converged
        assert_kkt(gram, u, v)


def test_the_dual_cone_solver_agrees_with_enumerating_every_active_set():
    """The exact minimiser by brute force over the faces {vᵢ = uᵢ for i ∈ A}, T = 4."""
    j = jacobian(4, 6, 11, shift=-0.3)
    gram = j @ j.T
    u = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=F64)
    best = None
    for size in range(5):
        for fixed in itertools.combinations(range(4), size):
            free = [i for i in range(4) if i not in fixed]
            v = u.clone()
            if free:
                f = torch.tensor(free)
                a = list(fixed)
                rhs = -(gram[f][:, a] @ u[a]) if fixed else torch.zeros(len(free), dtype=F64)
                v[f] = torch.linalg.solve(gram[f][:, f], rhs)
            if bool((v >= u - 1e-12).all()) and (best is None or float(v @ gram @ v) < float(best @ gram @ best)):
                best = v
    ours, _ = dual_cone_weights(gram, u, 100)
    torch.testing.assert_close(ours, best, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [dm.UPGrad, dm.DualProj])
@pytest.mark.parametrize(("rows", "cols"), SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_the_update_conflicts_with_no_task(cls, rows, cols, seed):
    j = jacobian(rows, cols, seed, shift=-0.2)
    d = cls(reg_eps=0.0).combine(j)
    assert bool((j @ d >= -1e-10 * float(j.norm() ** 2)).all())


@pytest.mark.parametrize(("rows", "cols"), SHAPES)
def test_dualproj_weights_are_the_projection_of_the_mean(rows, cols):
    j = jacobian(rows, cols, 5, shift=-0.3)
    alpha = dm.DualProj(reg_eps=0.0).row_weights(j)
    gram = (j @ j.T) / (j @ j.T).trace()
    assert_kkt(gram, torch.full((rows,), 1.0 / rows, dtype=F64), alpha)


@pytest.mark.parametrize("seed", range(4))
def test_upgrad_of_two_tasks_is_half_of_pcgrad(seed):
    """For two tasks the projection of a conflicting gᵢ onto the dual cone is its projection
    on the normal plane of the other, PCGrad's rule: UPGrad = PCGrad / 2."""
    j = jacobian(2, 6, seed)
    if float(j[0] @ j[1]) > 0:
        j[1] = -j[1]
    torch.testing.assert_close(dm.UPGrad(reg_eps=0.0).combine(j), dm.PCGrad().combine(j) / 2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [dm.UPGrad, dm.DualProj])
def test_without_conflict_the_update_is_the_weighted_mean(cls):
    j = jacobian(4, 9, 2).abs()  # every pairwise product positive
    torch.testing.assert_close(cls(reg_eps=0.0).combine(j), j.mean(dim=0), rtol=1e-12, atol=1e-12)
    pref = [0.1, 0.2, 0.3, 0.4]
    torch.testing.assert_close(cls(pref=pref, reg_eps=0.0).combine(j), torch.tensor(pref, dtype=F64) @ j)


@pytest.mark.parametrize("cls", [dm.UPGrad, dm.DualProj, dm.ConFIG])
def test_scaling_and_permuting_the_tasks(cls):
    j = jacobian(3, 7, 4, shift=-0.2)
    agg = cls()
    torch.testing.assert_close(agg.combine(3.0 * j), 3.0 * agg.combine(j), rtol=1e-9, atol=1e-12)
    order = torch.tensor([2, 0, 1])
    torch.testing.assert_close(agg.combine(j[order]), agg.combine(j), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [dm.UPGrad, dm.DualProj, dm.ConFIG])
def test_zero_rows_and_a_zero_jacobian(cls):
    zero = torch.zeros(3, 5, dtype=F64)
    assert torch.equal(cls().combine(zero), torch.zeros(5, dtype=F64))
    j = jacobian(3, 5, 1)
    j[1] = 0.0
    d = cls().combine(j)
    torch.testing.assert_close(d, cls().combine(j[[0, 2]]))  # the zero row is left out: the others decide
    assert cls().row_weights(j)[1] == 0


@pytest.mark.parametrize("cls", [dm.UPGrad, dm.DualProj, dm.ConFIG])
def test_bad_preferences_are_refused(cls):
    with pytest.raises(ValueError, match=r"option pref must hold numbers >= 0"):
        cls(pref=[1.0, -1.0])
    with pytest.raises(ValueError, match="2 preference values but the Jacobian has 3 rows"):
        cls(pref=[1.0, 1.0]).combine(jacobian(3, 4, 0))


@pytest.mark.parametrize(("rows", "cols"), [(2, 5), (3, 8), (4, 10)])
@pytest.mark.parametrize("seed", range(3))
def test_config_has_equal_cosines_and_the_projected_length(rows, cols, seed):
    j = jacobian(rows, cols, seed, shift=-0.2)
    d = dm.ConFIG().combine(j)
    cosines = (j @ d) / (j.norm(dim=1) * d.norm())
    torch.testing.assert_close(cosines, cosines[0].expand(rows), rtol=1e-9, atol=1e-12)
    assert float(cosines[0]) > 0
    unit = d / d.norm()
    torch.testing.assert_close(d.norm(), (j @ unit).sum())
    pref = torch.arange(1, rows + 1, dtype=F64)
    cosines = (j @ dm.ConFIG(pref=pref.tolist()).combine(j)) / j.norm(dim=1)
    torch.testing.assert_close(cosines / cosines[0], pref / pref[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(5))
def test_config_of_opposite_gradients_of_any_lengths_is_zero(dtype, seed):
    """No direction has a positive cosine with both g and −s·g: ConFIG's g_c is 0 and so is the
    update, whatever the lengths (rounding must not be rescaled into a step against a task)."""
    g = torch.randn(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for scale in (0.5, 1.0, 2.0, 1e-3, 7.3):
        jacobian = torch.stack([g, -scale * g]).to(dtype)
        assert float(dm.ConFIG().combine(jacobian).abs().max()) == 0.0
    jacobian = torch.tensor([[1.0, 2.0], [-0.5, -1.0]], dtype=dtype)
    assert torch.equal(dm.ConFIG().combine(jacobian), torch.zeros(2, dtype=dtype))


def test_config_direction_does_not_depend_on_the_task_weights():
    j = jacobian(3, 6, 3)
    scaled = torch.tensor([[0.5], [2.0], [1.0]], dtype=F64) * j
    a, b = dm.ConFIG().combine(j), dm.ConFIG().combine(scaled)
    torch.testing.assert_close(a / a.norm(), b / b.norm())


@pytest.mark.parametrize("cls", [dm.UPGrad, dm.DualProj])
@pytest.mark.parametrize("seed", range(20))
def test_with_the_default_regularisation_any_conflict_is_within_its_bound(cls, seed):
    """KKT of min vᵀ(G/tr G + εI)v, v ≥ u: (G/tr G + εI)v ≥ 0, so (Jd)ᵢ = (Gα)ᵢ ≥ −ε·tr(G)·αᵢ.
    Nearly opposite gradients make the bound active (a small conflict remains, as in TorchJD)."""
    j = jacobian(4, 6, seed, shift=-0.3)
    j[1] = -0.999 * j[0] + 1e-3 * j[1]
    aggregation = cls()
    alpha = aggregation.row_weights(j)
    products = j @ (alpha @ j)
    bound = -aggregation.reg_eps * float((j @ j.T).trace()) * alpha
    assert bool((products >= bound - 1e-12 * float(j.norm()) ** 2).all()), (products, bound)
    assert bool((j @ cls(reg_eps=0.0).combine(j) >= -1e-10 * float(j.norm() ** 2)).all())
