"""Run under ``torchrun --nproc_per_node=2`` by ``tests/test_lightning.py``: a real
``lightning.Trainer`` with the DDP strategy (gloo, CPU) trains :class:`MultiTaskModule` for
every case of :data:`CASES`; rank 0 writes each case's final parameters and weights, and
whether every rank ended with the same ones, to the JSON file named by the argument.

The same module gives the test its model, data and cases, so that one process can train the
reference: a plain :class:`~dynamtl.MultiTask` loop on the global batches.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import dynamtl as dm

TASKS = ("a", "b", "c")
SAMPLES, GLOBAL_BATCH = 64, 16

CASES: dict[str, Callable[[], dict]] = {
    "equal": lambda: {"weighting": dm.Equal()},
    "uncertainty": lambda: {"weighting": dm.Uncertainty()},
    "auto-lambda": lambda: {"weighting": dm.AutoLambda(primary=["a"], lr=0.01)},
    "hydalearn": lambda: {"weighting": dm.HydaLearn(main="a")},
    "cagrad": lambda: {"aggregation": dm.CAGrad(c=0.4)},
    "uncertainty-pcgrad": lambda: {"weighting": dm.Uncertainty(), "aggregation": dm.PCGrad()},
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(16, 1) for t in TASKS})

    def forward(self, x):
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


class Samples(Dataset):
    """``SAMPLES`` fixed samples ``(x, {task: y})`` drawn from ``seed``."""

    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(SAMPLES, 8, generator=g)
        self.y = {t: torch.randn(SAMPLES, generator=g) + i for i, t in enumerate(TASKS)}

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int):
        return self.x[i], {t: self.y[t][i] for t in TASKS}


def tasks() -> dm.Tasks:
    return dm.Tasks(dict.fromkeys(TASKS, F.mse_loss))


def optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def loaders(batch_size: int, order: list[int] | None = None) -> dict[str, DataLoader]:
    """The training and meta loaders, in the samples' order or in ``order``."""

    def loader(seed: int) -> DataLoader:
        data = Samples(seed)
        return DataLoader(data if order is None else Subset(data, order), batch_size=batch_size)

    return {"train": loader(0), "meta": loader(1)}


def ddp_order() -> list[int]:
    """The order of the samples in the global batches of the DDP run: Lightning gives each
    training loader a shuffling ``DistributedSampler`` (seed 0, epoch 0), whose permutation
    the processes share, process r taking its entries r, r + R, …"""
    return torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(0)).tolist()


def lightning_run(case: str, processes: int, **trainer: object) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Final parameters and the last weights of one epoch of Lightning training of ``case``
    on ``processes`` processes, each with its share of the global batch."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy

    from dynamtl.lightning import MultiTaskModule

    torch.manual_seed(0)
    module = MultiTaskModule(Net(), tasks(), optimizer, **CASES[case]())
    strategy = DDPStrategy(process_group_backend="gloo") if processes > 1 else "auto"
    settings = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                "enable_model_summary": False, "max_epochs": 1, **trainer}
    pl.Trainer(accelerator="cpu", devices=processes, strategy=strategy, **settings).fit(
        module, loaders(GLOBAL_BATCH // processes)
    )
    assert module.last_step is not None
    return [p.detach().clone() for p in module.model.parameters()], module.last_step.weights


def main(out: str) -> None:
    import torch.distributed as dist

    results = {}
    for case in CASES:
        try:
            params, weights = lightning_run(case, 2)
            flat = torch.cat([p.reshape(-1) for p in params] + [weights])
            gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, flat)
            results[case] = {"params": [p.tolist() for p in params], "weights": weights.tolist(),
                             "ranks_equal": all(torch.equal(g, gathered[0]) for g in gathered)}
        except Exception:
            results[case] = {"error": traceback.format_exc()}
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()  # join gloo's threads before exit: left running they abort the process


if __name__ == "__main__":
    main(sys.argv[1])
