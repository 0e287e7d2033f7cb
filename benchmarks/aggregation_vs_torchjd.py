"""Time our gradient aggregations against TorchJD's on the Jacobians of the benchmark models.

The Jacobian is the matrix [3, D] of the task gradients of the shared trunk of each model
of ``benchmarks/models.py`` (MLP: D ≈ 99k; CNN: D ≈ 466k), float32 on the CPU. Each pair of
aggregators gets the same Jacobian; calls alternate between the two libraries, and the
median over ``--repeats`` calls is printed with the ratio ours / TorchJD (below 1: ours is
faster).

    python benchmarks/aggregation_vs_torchjd.py [--repeats 30] [--threads N]

Needs ``pip install torchjd`` (and ``'torchjd[cagrad,nash_mtl]'`` for those two).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models

from dynamtl.aggregation.aligned_mtl import AlignedMTL
from dynamtl.aggregation.cagrad import CAGrad
from dynamtl.aggregation.graddrop import GradDrop
from dynamtl.aggregation.gradvac import GradVac
from dynamtl.aggregation.imtl_g import IMTLG
from dynamtl.aggregation.mgda import MGDA
from dynamtl.aggregation.nash_mtl import NashMTL
from dynamtl.aggregation.pcgrad import PCGrad


def pairs() -> dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor] | None]]:
    """Method -> (ours, TorchJD's) with the same settings; TorchJD's is None if unavailable."""
    from torchjd import aggregation as jd

    def theirs(make: Callable[[], Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor] | None:
        try:
            return make()
        except ImportError:
            return None

    return {
        "PCGrad": (PCGrad().combine, theirs(jd.PCGrad)),
        "GradDrop": (GradDrop().combine, theirs(jd.GradDrop)),
        "CAGrad(c=0.4)": (CAGrad(c=0.4, rescale=False).combine, theirs(lambda: jd.CAGrad(c=0.4))),
        "MGDA exact | TorchJD FW": (MGDA().combine, theirs(jd.MGDA)),
        "MGDA Frank-Wolfe": (MGDA(solver="frank-wolfe", tol=1e-3, max_iters=100).combine, theirs(jd.MGDA)),
        "IMTL-G": (IMTLG().combine, theirs(jd.IMTLG)),
        "Nash-MTL": (NashMTL().combine, theirs(lambda: jd.NashMTL(n_tasks=3, max_norm=0.0))),
        "Aligned-MTL": (AlignedMTL().combine, theirs(jd.AlignedMTL)),
        "GradVac": (GradVac().combine, theirs(jd.GradVac)),
    }


def trunk_jacobian(kind: str) -> Tensor:
    """The task gradients [3, D] of the trunk of model ``kind`` on one random batch."""
    torch.manual_seed(0)
    model = models.MODELS[kind]()
    x, targets = models.batch(kind, torch.Generator().manual_seed(0))
    outputs = model(x)
    trunk = list(model.trunk.parameters())
    rows = []
    for task, loss_fn in models.tasks().losses.items():
        grads = torch.autograd.grad(loss_fn(outputs[task], targets[task]), trunk, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def timed(fn: Callable[[Tensor], Tensor], jacobian: Tensor, times: list[float]) -> None:
    """Call ``fn(jacobian)`` once and append its wall time in milliseconds to ``times``."""
    start = time.perf_counter()
    fn(jacobian)
    times.append(1e3 * (time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # cvxpy's DPP notices from TorchJD's Nash-MTL
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} calls")
    print(f"{'model':5} {'method':25} {'D':>8} {'ours ms':>9} {'TorchJD ms':>11} {'ratio':>7}")
    for kind in models.MODELS:
        jacobian = trunk_jacobian(kind)
        with torch.no_grad():
            for name, (ours, theirs) in pairs().items():
                ours_times: list[float] = []
                their_times: list[float] = []
                for _ in range(3):  # warm-up (first solves, allocations)
                    ours(jacobian)
                    if theirs is not None:
                        theirs(jacobian)
                for _ in range(args.repeats):
                    timed(ours, jacobian, ours_times)
                    if theirs is not None:
                        timed(theirs, jacobian, their_times)
                mine = statistics.median(ours_times)
                if their_times:
                    other = statistics.median(their_times)
                    print(f"{kind:5} {name:25} {jacobian.shape[1]:8d} {mine:9.3f} {other:11.3f} {mine / other:7.2f}")
                else:
                    print(f"{kind:5} {name:25} {jacobian.shape[1]:8d} {mine:9.3f} {'n/a':>11} {'':>7}")


if __name__ == "__main__":
    main()
