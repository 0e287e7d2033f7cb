"""Our gradient aggregations against TorchJD's, on the same Jacobians.

Every aggregator both libraries have is fed identical matrices. Intended differences are
named where they are avoided (and in our docstrings):

* random task orders and masks come from our seeded generators, TorchJD's from the global
  torch generator: PCGrad and GradVac are compared where the order does not matter (2 tasks,
  or a single conflicting pair); GradDrop with the global generator seeded like ours;
* GradVac's default β is the paper's 0.01, TorchJD's 0.5: the same β is passed to both;
* Nash-MTL: TorchJD clips ‖d‖ to 1 by default and solves only approximately (cvxpy, residual
  1e-3); ours solves (Gα)ᵢ = 1/αᵢ to 1e-6: compared with clipping off, to 1e-2;
* CAGrad: TorchJD does not rescale by 1 + c² (our ``rescale=False``), and returns 0 when the
  squared norm of the Jacobian is below 1e-4 (ours is scale-invariant): Jacobians here are larger;
* MGDA: TorchJD runs Frank-Wolfe (ε = 1e-3, 100 iterations); our ``solver="frank-wolfe"``
  with the same settings is the same algorithm; our exact default is compared with TorchJD
  run to convergence;
* Aligned-MTL: TorchJD's ``"rmse"`` is our ``"mean"``; its ``"median"`` takes the lower
  middle eigenvalue, so it is compared with an odd number of tasks.
"""

import pytest
import torch

torchjd = pytest.importorskip("torchjd", reason="TorchJD is an optional reference: pip install torchjd")
from torchjd import aggregation as jd  # noqa: E402

from dynamtl.aggregation.aligned_mtl import AlignedMTL  # noqa: E402
from dynamtl.aggregation.cagrad import CAGrad  # noqa: E402
from dynamtl.aggregation.graddrop import GradDrop  # noqa: E402
from dynamtl.aggregation.gradvac import GradVac  # noqa: E402
from dynamtl.aggregation.imtl_g import IMTLG  # noqa: E402
from dynamtl.aggregation.mgda import MGDA  # noqa: E402
from dynamtl.aggregation.nash_mtl import NashMTL  # noqa: E402
from dynamtl.aggregation.pcgrad import PCGrad  # noqa: E402

# TorchJD's Nash-MTL builds a cvxpy problem that cvxpy notes is not DPP: not our concern here
pytestmark = pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
F64 = torch.float64
SHAPES = [(2, 5, 0), (3, 8, 1), (4, 10, 2), (3, 50, 3)]


def jacobian(rows, cols, seed, shift=0.0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=F64) + shift


def cvxpy_or_skip(extra):
    """TorchJD's CAGrad and Nash-MTL need cvxpy (and solvers): skip when they are missing."""
    try:
        return {"cagrad": lambda: jd.CAGrad(c=0.4), "nash": lambda: jd.NashMTL(n_tasks=2, max_norm=0.0)}[extra]()
    except ImportError:
        pytest.skip(f"TorchJD's optional dependencies are missing: pip install 'torchjd[{extra}]'")


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_two_tasks(seed):
    j = jacobian(2, 6, seed)
    torch.testing.assert_close(PCGrad().combine(j), jd.PCGrad()(j))


def test_pcgrad_one_conflicting_pair_among_three():
    # only the pair (0, 1) conflicts, and neither projected row then conflicts with row 2:
    # every order gives the same result
    j = torch.tensor([[1.0, 0.2, 0.0], [-1.0, 0.5, 0.0], [0.2, 0.8, 1.0]], dtype=F64)
    assert (j @ j.T < 0).sum() == 2
    torch.testing.assert_close(PCGrad().combine(j), jd.PCGrad()(j))


@pytest.mark.parametrize("seed", range(3))
def test_graddrop_with_the_same_uniform_draws(seed):
    j = jacobian(3, 200, seed)
    ours = GradDrop(seed=seed).combine(j)
    torch.manual_seed(seed)
    torch.testing.assert_close(ours, jd.GradDrop()(j))
    leak = [0.2, 0.0, 0.7]
    ours = GradDrop(leak=leak, seed=seed).combine(j)
    torch.manual_seed(seed)
    torch.testing.assert_close(ours, jd.GradDrop(leak=torch.tensor(leak, dtype=F64))(j))


@pytest.mark.parametrize("rows,cols,seed", SHAPES)
def test_cagrad(rows, cols, seed):
    cvxpy_or_skip("cagrad")
    j = jacobian(rows, cols, seed)
    for c in (0.2, 0.4, 0.8):
        ours, theirs = CAGrad(c=c, rescale=False).combine(j), jd.CAGrad(c=c)(j)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3 * float(theirs.norm()))
        # both lie on the ball's boundary; ours reaches a worst-case rate at least as high
        assert (j @ ours).min() >= (j @ theirs).min() - 1e-9


@pytest.mark.parametrize("rows,cols,seed", SHAPES)
def test_mgda_frank_wolfe_is_torchjd_s_algorithm(rows, cols, seed):
    j = jacobian(rows, cols, seed)
    torch.testing.assert_close(MGDA(solver="frank-wolfe", tol=1e-3, max_iters=100).combine(j), jd.MGDA()(j))


@pytest.mark.parametrize("rows,cols,seed", SHAPES)
def test_mgda_exact_against_converged_frank_wolfe(rows, cols, seed):
    j = jacobian(rows, cols, seed)
    reference = jd.MGDA(epsilon=1e-9, max_iters=3000)(j)
    ours = MGDA().combine(j)
    assert ours.norm() <= reference.norm() + 1e-9  # the exact min-norm point is never longer
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-2 * float(j.norm()))


@pytest.mark.parametrize("rows,cols,seed", SHAPES)
def test_imtlg(rows, cols, seed):
    j = jacobian(rows, cols, seed)
    torch.testing.assert_close(IMTLG().combine(j), jd.IMTLG()(j))


@pytest.mark.parametrize("rows,cols,seed", SHAPES)
def test_nash_mtl(rows, cols, seed):
    cvxpy_or_skip("nash")
    j = jacobian(rows, cols, seed, shift=1.0)
    reference = jd.NashMTL(n_tasks=rows, max_norm=0.0)(j)
    torch.testing.assert_close(NashMTL().combine(j), reference, rtol=1e-2, atol=1e-2 * float(reference.norm()))


@pytest.mark.parametrize("rows,cols,seed", SHAPES)
@pytest.mark.parametrize("ours,theirs", [("min", "min"), ("mean", "rmse")])
def test_aligned_mtl(rows, cols, seed, ours, theirs):
    j = jacobian(rows, cols, seed)
    torch.testing.assert_close(AlignedMTL(scale=ours).combine(j), jd.AlignedMTL(scale_mode=theirs)(j))
    pref = torch.linspace(0.5, 2.0, rows, dtype=F64)
    torch.testing.assert_close(
        AlignedMTL(scale=ours, pref=pref.tolist()).combine(j), jd.AlignedMTL(pref_vector=pref, scale_mode=theirs)(j)
    )


def test_aligned_mtl_median_with_an_odd_rank():
    j = jacobian(3, 7, 4)
    torch.testing.assert_close(AlignedMTL(scale="median").combine(j), jd.AlignedMTL(scale_mode="median")(j))


@pytest.mark.parametrize("beta", [0.01, 0.5])
def test_gradvac_two_tasks_over_several_steps(beta):
    ours, theirs = GradVac(beta=beta), jd.GradVac(beta=beta, eps=0.0)
    for step in range(6):
        j = jacobian(2, 6, 10 + step)
        torch.testing.assert_close(ours.combine(j), theirs(j), msg=f"step {step}")
