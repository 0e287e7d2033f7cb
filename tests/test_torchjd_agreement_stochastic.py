"""SDMGrad and MoDo against TorchJD's weightings, which take the cross-Gram matrix
A = J₁J₂ᵀ of two independent mini-batches and keep their weights between calls. The same
sequence of batches goes into both, over several steps (so the warm start and the state
are compared too). Intended differences, avoided here:

* SDMGrad: TorchJD (like the official code) adds a small constant when normalising A by s²;
  ours divides by s² exactly: equal to about 1e-8 relative for rows of norm about 1–10;
* MoDo: TorchJD's step is the official raw one: compared with ``normalize=False``.

TorchJD 0.18 has no MoCo.
"""

import pytest
import torch

torchjd = pytest.importorskip("torchjd", reason="TorchJD is an optional reference: pip install torchjd")
jd = pytest.importorskip("torchjd.aggregation")
if not hasattr(jd, "SDMGradWeighting"):
    pytest.skip("this TorchJD has no SDMGrad or MoDo (0.18 has)", allow_module_level=True)

import dynamtl as dm  # noqa: E402

F64 = torch.float64


def batches(steps: int, tasks: int, dim: int, seed: int) -> list[list[torch.Tensor]]:
    """Per step, the rows of three batches: a common mean plus noise, so that tasks conflict
    a little and the weights move without sitting on a vertex."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(tasks, dim, generator=g, dtype=F64) * 2
    return [[mean + torch.randn(tasks, dim, generator=g, dtype=F64) for _ in range(3)] for _ in range(steps)]


@pytest.mark.parametrize(("tasks", "dim", "seed"), [(2, 6, 0), (3, 10, 1), (5, 20, 2)])
@pytest.mark.parametrize(("reg", "lr", "momentum", "iterations"), [(0.3, 10.0, 0.5, 20), (0.0, 0.5, 0.0, 5),
                                                                   (1.0, 2.0, 0.9, 10)])
def test_sdmgrad_agrees_with_torchjd(tasks, dim, seed, reg, lr, momentum, iterations):
    ours = dm.SDMGrad(reg=reg, lr=lr, momentum=momentum, iterations=iterations)
    theirs = jd.SDMGradWeighting(lr=lr, momentum=momentum, n_iter=iterations, lambda_=reg)
    for main, first, second in batches(4, tasks, dim, seed):
        expected = theirs(first @ second.T)
        torch.testing.assert_close(ours.sampled_row_weights(main, [first, second]), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("tasks", "dim", "seed"), [(2, 6, 0), (3, 10, 1), (5, 20, 2)])
@pytest.mark.parametrize(("gamma", "rho"), [(0.1, 0.1), (0.01, 0.0), (0.003, 0.5)])
def test_modo_agrees_with_torchjd(tasks, dim, seed, gamma, rho):
    ours = dm.MoDo(gamma=gamma, rho=rho, normalize=False)
    theirs = jd.MoDoWeighting(gamma=gamma, rho=rho)
    for main, first, second in batches(4, tasks, dim, seed):
        expected = theirs(first @ second.T)
        torch.testing.assert_close(ours.sampled_row_weights(main, [first, second]), expected, rtol=1e-10, atol=1e-12)


def test_the_single_batch_variants_agree_with_torchjd_given_the_gram_matrix():
    sdm, modo = dm.SDMGrad(double_sampling=False), dm.MoDo(gamma=0.01, normalize=False, double_sampling=False)
    jd_sdm, jd_modo = jd.SDMGradWeighting(), jd.MoDoWeighting(gamma=0.01)
    for main, _, _ in batches(3, 3, 8, 4):
        # lr = 10 bounces on the simplex's faces, which amplifies TorchJD's 1e-8 in the normalisation
        torch.testing.assert_close(sdm.row_weights(main), jd_sdm(main @ main.T), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(modo.row_weights(main), jd_modo(main @ main.T), rtol=1e-10, atol=1e-12)
