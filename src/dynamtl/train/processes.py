"""The processes of one run: a single one, or those that ``torchrun`` launched.

Under ``torchrun --nproc_per_node=R`` (``WORLD_SIZE`` > 1 in the environment) the run
joins the process group (gloo on CPU, NCCL on CUDA, device ``cuda:LOCAL_RANK``), wraps the
model in :class:`~torch.nn.parallel.DistributedDataParallel`, and every process takes the
rows ``[r·B/R, (r+1)·B/R)`` of every global batch of B rows: since the trainer's batch
order depends on the seed alone, R processes take the step that one process takes on the
whole batch (``docs/distributed.md``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dynamtl.train.config import ConfigError
from dynamtl.train.threads import torch_threads


def launched_as_main() -> bool:
    """Whether this process is the only one, or rank 0 of those ``torchrun`` launched."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class Processes:
    """This process's ``rank`` among ``size`` processes, and its ``device``."""

    device: torch.device
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (without ``static_graph``) when distributed."""
        if not self.distributed:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def shard(self, batch: Any) -> Any:
        """This process's equal contiguous share of the rows of every tensor in ``batch``
        (nested in tuples, lists, dicts); ``ConfigError`` if a tensor's rows do not divide."""
        if not self.distributed:
            return batch
        if isinstance(batch, Tensor):
            rows = len(batch)
            if rows % self.size:
                raise ConfigError(
                    f"a batch of {rows} samples cannot be shared equally by {self.size} processes: choose "
                    f"--batch-size and --limit so that every batch (the last of an epoch too) divides by {self.size}"
                )
            share = rows // self.size
            return batch[self.rank * share : (self.rank + 1) * share]
        if isinstance(batch, dict):
            return {key: self.shard(value) for key, value in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.shard(value) for value in batch)
        return batch

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process (the same answer on every process)."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


@contextlib.contextmanager
def processes(device: str, threads: int | None = None) -> Iterator[Processes]:
    """The processes of a run on ``device``, each with ``threads`` torch threads (``None``:
    as it is; the previous count is put back at the end): joins (and finally leaves) the
    process group that ``torchrun`` describes in the environment when ``WORLD_SIZE`` > 1,
    or reuses the one already joined; a single process otherwise. Every process has passed
    its checks of the run folder when this is entered (a barrier), and waits for the
    others at a normal exit."""
    with torch_threads(threads):
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            yield Processes(torch.device(device))
            return
        chosen = torch.device(device)
        if chosen.type == "cuda":
            chosen = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(chosen)
        joined = not dist.is_initialized()
        if joined:
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
        try:
            dist.barrier()
            yield Processes(chosen, dist.get_rank(), dist.get_world_size())
            dist.barrier()
        finally:
            if joined:
                dist.destroy_process_group()
