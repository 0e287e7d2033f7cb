"""Run under ``torchrun`` by ``tests/test_distributed.py``: MultiTask over DDP against one process.

Check mode, ``torchrun --nproc_per_node=2 tests/distributed_worker.py OUT.json``: for every
case of :data:`CASES`, a float64 model is trained for a few steps by ``MultiTask`` over
DistributedDataParallel (gloo, CPU), every process on an equal shard of
each global batch (and meta batch), and, in every process, by one plain ``MultiTask`` on
the global batches. Rank 0 writes per case the largest differences of parameters, weights,
losses and weighting/aggregation state to that reference, the state entries in which
another rank differs from rank 0 (bit for bit), and how many buckets DDP all-reduced at
every step.

Timing mode, ``torchrun --nproc_per_node=N tests/distributed_worker.py --time CASE``: the
median time of ``MultiTask.step`` of a larger model on a global batch of 256, split over
the N processes; rank 0 prints it.
"""

import argparse
import copy
import datetime
import json
import statistics
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

import dynamtl as dm
from dynamtl.distributed import unwrap

TASKS = ("a", "b", "c")
STEPS = 5
GLOBAL_BATCH = 16

Batch = tuple[Tensor, dict[str, Tensor]]


@dataclass(frozen=True)
class Case:
    """A weighting and an aggregation, how the model and DDP are set up for them, and
    whether their step ends in one backward pass of the weighted loss (``one_backward``),
    which DDP synchronises; otherwise ``.grad`` is formed from averaged task gradients."""

    weighting: Callable[[], dm.Weighting]
    aggregation: Callable[[], dm.Aggregation] = dm.Sum
    one_backward: bool = False
    optimizer: str = "sgd"
    representation: str | None = None
    find_unused_parameters: bool = False


CASES: dict[str, Case] = {
    "equal": Case(dm.Equal, one_backward=True),
    "uncertainty": Case(dm.Uncertainty, one_backward=True),
    "dwa": Case(dm.DWA, one_backward=True),
    "famo": Case(dm.FAMO, one_backward=True),
    "rlw": Case(dm.RLW, one_backward=True),
    "gradnorm": Case(dm.GradNorm),
    "gcs": Case(lambda: dm.GCS(main="a")),
    "ol-aux": Case(lambda: dm.OLAux(main="a", interval=2)),
    "auto-lambda": Case(lambda: dm.AutoLambda(lr=1e-2), one_backward=True),
    "auto-lambda-auxiliary-adam": Case(
        lambda: dm.AutoLambda(primary="a", lr=1e-2), one_backward=True, optimizer="adam"
    ),
    "auto-lambda-exact": Case(lambda: dm.AutoLambda(lr=1e-2, hypergradient="exact"), one_backward=True),
    "auto-lambda-lagged": Case(lambda: dm.AutoLambda(lr=1e-2, order="lagged"), one_backward=True),
    "hydalearn": Case(lambda: dm.HydaLearn(main="a")),
    "hydalearn-first-order-meta": Case(lambda: dm.HydaLearn(main="a", gain="first_order", gain_batch="meta")),
    "pcgrad": Case(dm.Equal, dm.PCGrad),
    "pcgrad-find-unused-parameters": Case(dm.Equal, dm.PCGrad, find_unused_parameters=True),
    "cagrad": Case(dm.Equal, dm.CAGrad),
    "mgda": Case(dm.Equal, dm.MGDA),
    "mgda-upper-bound": Case(
        dm.Equal,
        lambda: dm.MGDA(upper_bound=True),
        one_backward=True,
        representation="trunk",
    ),
    "graddrop": Case(dm.Equal, dm.GradDrop),
    "gradvac": Case(dm.Equal, dm.GradVac),
    "imtl-g": Case(dm.Equal, dm.IMTLG),
    "nash-mtl": Case(dm.Equal, dm.NashMTL),
    "aligned-mtl": Case(dm.Equal, dm.AlignedMTL),
    "auto-lambda+cagrad": Case(lambda: dm.AutoLambda(lr=1e-2), dm.CAGrad),
    "uncertainty+pcgrad": Case(dm.Uncertainty, dm.PCGrad),
}

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
}


class Net(nn.Module):
    """A shared trunk (``depth`` tanh layers of ``width``) and one linear head per task."""

    def __init__(self, inputs: int = 4, width: int = 5, depth: int = 1) -> None:
        super().__init__()
        sizes = [inputs] + [width] * depth
        self.trunk = nn.Sequential(
            *[m for i in range(depth) for m in (nn.Linear(sizes[i], width), nn.Tanh())]
        )
        self.heads = nn.ModuleDict({t: nn.Linear(width, 1) for t in TASKS})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def global_batch(seed: int, n: int = GLOBAL_BATCH, inputs: int = 4) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, inputs, generator=gen, dtype=torch.float64)
    return x, {t: torch.randn(n, generator=gen, dtype=torch.float64) for t in TASKS}


def shard(batch: Batch, rank: int, size: int) -> Batch:
    """This rank's equal share of the rows of ``batch``."""
    x, y = batch
    rows = slice(rank * len(x) // size, (rank + 1) * len(x) // size)
    return x[rows], {t: v[rows] for t, v in y.items()}


def flatten(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """Every tensor and number in nested dicts and lists, by path; other objects (strings,
    Auto-Lambda's pending step, which holds this rank's shard of a batch) are left out."""
    if isinstance(obj, Tensor):
        return {prefix: obj.detach().cpu()}
    if isinstance(obj, (bool, int, float)):
        return {prefix: torch.tensor(obj)}
    if isinstance(obj, Mapping):
        items = list(obj.items())
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    else:
        return {}
    return {k: v for key, value in items for k, v in flatten(value, f"{prefix}/{key}").items()}


def train(
    case: Case,
    model: nn.Module,
    batches: list[Batch],
    metas: list[Batch],
    after_step: Callable[[], None] = lambda: None,
) -> tuple[dict[str, Tensor], list[float]]:
    """One step of ``case`` per batch; everything that must match, and the seconds of every step."""
    mtl = dm.MultiTask(
        model,
        dm.Tasks(dict.fromkeys(TASKS, F.mse_loss)),
        OPTIMIZERS[case.optimizer](model.parameters()),
        weighting=case.weighting(),
        aggregation=case.aggregation(),
        representation=case.representation,
    )
    infos = []
    for batch, meta in zip(batches, metas):
        infos.append(mtl.step(batch, meta_batch=meta))
        mtl.end_epoch()
        after_step()
    record = {f"param/{n}": p.detach().clone() for n, p in unwrap(model).named_parameters()}
    record["weights"] = torch.stack([info.weights for info in infos])
    record["losses"] = torch.stack([info.losses for info in infos])
    record.update(flatten(mtl.state_dict(), "state"))
    return record, [info.seconds for info in infos]


def largest_difference(ours: dict[str, Tensor], reference: dict[str, Tensor], prefix: str) -> float:
    keys = [k for k in reference if k.startswith(prefix)]
    return max(
        (float((ours[k].double() - reference[k].double()).abs().max()) for k in keys if ours[k].numel()),
        default=0.0,
    )


def check(case: Case, rank: int, size: int) -> dict[str, Any]:
    """Train ``case`` over DDP and in one process; the differences (on rank 0)."""
    torch.manual_seed(0)
    model = Net().double()
    batches = [global_batch(seed) for seed in range(STEPS)]
    metas = [global_batch(100 + seed) for seed in range(STEPS)]
    reference, _ = train(case, copy.deepcopy(model), batches, metas)
    ddp = DistributedDataParallel(copy.deepcopy(model), find_unused_parameters=case.find_unused_parameters)
    buckets: list[int] = []  # one entry per bucket that DDP all-reduces
    ddp.register_comm_hook(buckets, _counting_allreduce)
    ends: list[int] = []
    ours, _ = train(
        case,
        ddp,
        [shard(b, rank, size) for b in batches],
        [shard(m, rank, size) for m in metas],
        lambda: ends.append(len(buckets)),
    )
    gathered: list[dict[str, Tensor]] = [{} for _ in range(size)]
    dist.all_gather_object(gathered, ours)
    return {
        "missing": sorted(set(reference) ^ set(ours)),
        "param_error": largest_difference(ours, reference, "param/"),
        "weight_error": largest_difference(ours, reference, "weights"),
        "loss_error": largest_difference(ours, reference, "losses"),
        "state_error": largest_difference(ours, reference, "state"),
        "rank_mismatches": sorted(
            {k for other in gathered[1:] for k in ours if not torch.equal(other[k], ours[k])}
        ),
        "state_keys": sorted(k for k in ours if k.startswith("state")),
        "ddp_buckets": [end - start for start, end in zip([0, *ends], ends)],
    }


def _counting_allreduce(buckets: list[int], bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """DDP's default all-reduce, counted."""
    buckets.append(bucket.index())
    return allreduce_hook(None, bucket)  # type: ignore[arg-type]


def timing(name: str, rank: int, size: int, steps: int) -> None:
    """Median seconds of one step of ``name`` on a global batch of 256 over ``size`` processes."""
    torch.manual_seed(0)
    model = DistributedDataParallel(Net(inputs=64, width=512, depth=3).double())
    batches = [shard(global_batch(s, 256, 64), rank, size) for s in range(steps + 1)]
    _, seconds = train(CASES[name], model, batches[:-1], batches[1:])
    if rank == 0:
        print(f"{name}: {size} process(es), median step {statistics.median(seconds[3:]) * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="check mode: the JSON file rank 0 writes")
    parser.add_argument("--time", choices=sorted(CASES), help="timing mode: the case to time")
    parser.add_argument("--steps", type=int, default=23, help="timing mode: steps (the first 3 untimed)")
    args = parser.parse_args()
    if (args.out is None) == (args.time is None):
        parser.error("give either OUT.json (check mode) or --time CASE (timing mode)")
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank, size = dist.get_rank(), dist.get_world_size()
    if args.time:
        timing(args.time, rank, size, args.steps)
    else:
        results = {}
        for name, case in CASES.items():
            try:
                results[name] = check(case, rank, size)
            except Exception:
                results[name] = {"error": traceback.format_exc()}
        if rank == 0:
            with open(args.out, "w") as file:
                json.dump(results, file, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
