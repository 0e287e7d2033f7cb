"""FairGrad against its defining equation (Gw)ᵢ = wᵢ^(−1/α) and its special cases."""

import pytest
import torch

import dynamtl as dm

F64 = torch.float64


def jacobian(rows, cols, seed, shift=0.3):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=F64) + shift


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.0, 10.0])
@pytest.mark.parametrize(("rows", "cols", "seed"), [(2, 4, 0), (3, 8, 1), (5, 12, 2)])
def test_the_weights_solve_the_alpha_fair_equation(alpha, rows, cols, seed):
    j = 10.0 * jacobian(rows, cols, seed)  # not unit scale: the rescaling of G is exercised
    w = dm.FairGrad(alpha=alpha).row_weights(j)
    rates = j @ dm.FairGrad(alpha=alpha).combine(j)
    assert bool((w > 0).all())
    torch.testing.assert_close(rates, w ** (-1.0 / alpha), rtol=1e-7, atol=0)


def test_alpha_one_is_nash_mtl_and_alpha_zero_the_mean():
    j = jacobian(3, 6, 4)
    torch.testing.assert_close(dm.FairGrad(alpha=1.0).combine(j), dm.NashMTL().combine(j), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(dm.FairGrad(alpha=0.0).combine(j), j.mean(0))


def test_orthogonal_gradients_have_the_closed_form():
    j = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=F64))
    alpha = 2.0
    w = dm.FairGrad(alpha=alpha).row_weights(j)
    torch.testing.assert_close(w, j.diagonal() ** (-2 * alpha / (alpha + 1)))


def test_larger_alpha_favours_the_slowest_task():
    """α → ∞ is max-min fairness: the spread of the rates gᵢ·d shrinks as α grows."""
    j = jacobian(3, 6, 5)
    spreads = []
    for alpha in [0.5, 2.0, 20.0]:
        rates = j @ dm.FairGrad(alpha=alpha).combine(j)
        spreads.append(float(rates.max() / rates.min()))
    assert spreads[0] > spreads[1] > spreads[2]


def test_zero_rows_are_left_out_and_bad_options_refused():
    j = jacobian(3, 5, 6)
    j[1] = 0.0
    w = dm.FairGrad().row_weights(j)
    assert w[1] == 0 and bool((w[[0, 2]] > 0).all())
    torch.testing.assert_close(dm.FairGrad().combine(j), dm.FairGrad().combine(j[[0, 2]]))
    assert torch.equal(dm.FairGrad().combine(torch.zeros(2, 3, dtype=F64)), torch.zeros(3, dtype=F64))
    j[1] = 1e-20 * j[0] + 1e-21  # negligible next to the others: left out as well
    torch.testing.assert_close(dm.FairGrad().combine(j), dm.FairGrad().combine(j[[0, 2]]))
    with pytest.raises(ValueError, match=r"FairGrad's option alpha must be >= 0 and finite, got -1\.0"):
        dm.FairGrad(alpha=-1.0)


def test_no_solution_falls_back_with_a_warning(caplog):
    j = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)  # 0 is in the hull: no w > 0 exists
    d = dm.FairGrad(max_iters=20).combine(j)
    assert torch.isfinite(d).all()
    assert "did not solve" in caplog.text


@pytest.mark.parametrize("alpha", [0.5, 5.0, 1e3, 1e6])
def test_a_tolerance_below_rounding_is_met_at_the_solution_not_given_up(alpha, caplog):
    """maxᵢ |wᵢ^(1/α)(Gw)ᵢ − 1| cannot fall below float64 rounding: tol=1e-300 ended unconverged
    and fell back to the orthogonal solution (far from the answer) with a warning about the
    convex hull."""
    j = torch.tensor([[1.0, 0.2, 0.0], [-0.3, 1.0, 0.5], [0.1, -0.2, 2.0]], dtype=F64)
    strict = dm.FairGrad(alpha=alpha, tol=1e-300).row_weights(j)
    torch.testing.assert_close(strict, dm.FairGrad(alpha=alpha, tol=1e-12).row_weights(j), rtol=1e-9, atol=0)
    rates = j @ (strict @ j)
    torch.testing.assert_close(rates, strict ** (-1.0 / alpha), rtol=1e-9, atol=0)
    assert "did not solve" not in caplog.text
