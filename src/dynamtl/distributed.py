"""What changes under ``torchrun`` with :class:`~torch.nn.parallel.DistributedDataParallel`.

Under DDP, R processes each hold a replica of the model and an equal shard of the global
batch. With task losses that are means over the batch, the global batch's loss is the
mean of the R shards' losses, and so is every quantity linear in the losses: gradients,
meta-gradients, directional derivatives, finite differences, look-ahead gains. dynamtl
averages each such quantity over the processes exactly where one process would have used
the whole global batch; every process then computes the same weights and the same step as
one process on the global batch.

Everything distributed lives here, and is a no-op for a model that is not wrapped in DDP
(or when ``torch.distributed`` is not initialised, or has one process):

* :func:`unwrap`: the module inside a DDP wrapper, for functional evaluations at other
  parameters, which must not go through DDP's forward;
* :class:`Replicas`: the processes that hold the model, and the averages over them.

DDP's own gradient synchronisation runs when a backward pass accumulates gradients into
the parameters' ``.grad`` (``loss.backward()``); per-task gradients taken with
:func:`torch.autograd.grad` are invisible to it. So a step whose gradient is one backward
pass of the weighted loss (:class:`~dynamtl.Sum`) is synchronised by DDP, and a step that
forms ``.grad`` from averaged per-task gradients (every other aggregation, or a weighting
that needs them) is synchronised here, never by both.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


def unwrap(model: nn.Module) -> nn.Module:
    """The module that a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper and/or
    a ``torch.compile`` wrapper hold (in any order), or ``model``: functional evaluations at
    other parameters run on it, in eager mode."""
    while True:
        inner = _compiled(model)
        if inner is not None:
            model = inner
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            return model


def compiled(model: nn.Module) -> bool:
    """Whether ``model`` is, or wraps, a ``torch.compile``d module (its forward pass runs as
    compiled graphs, in which hooks on its submodules do not run as in eager mode)."""
    while True:
        if _compiled(model) is not None or getattr(model, "_compiled_call_impl", None) is not None:
            return True  # torch.compile(model), or model.compile() in place
        if not isinstance(model, DistributedDataParallel):
            return False
        model = model.module


def _compiled(model: nn.Module) -> nn.Module | None:
    """The original module of a ``torch.compile``d one (without importing torch._dynamo:
    nothing was compiled if it is not loaded)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        return model._orig_mod
    return None


class Replicas:
    """The processes that hold replicas of one model: averages of tensors over them.

    Args:
        group: the process group of the replicas, ``None`` for a single process.

    Build it with :meth:`of`. With a single process every average is the tensor itself.

    >>> import torch
    >>> Replicas().means([torch.tensor([1.0, 2.0]), None])
    [tensor([1., 2.]), None]
    """

    def __init__(self, group: ProcessGroup | None = None) -> None:
        self.group = group
        self.size = 1 if group is None else dist.get_world_size(group)

    @classmethod
    def of(cls, model: nn.Module) -> Replicas:
        """The replicas of ``model``: DDP's process group when ``model`` is a
        DistributedDataParallel wrapper in an initialised process group of more than one
        process; a single process otherwise.

        Raises ``ValueError`` for a wrapper built with ``static_graph=True``: its first
        step would take a :func:`torch.autograd.grad` pass for the backward pass and stop
        synchronising the later ones.
        """
        while (inner := _compiled(model)) is not None:  # torch.compile(DDP(model))
            model = inner
        if not isinstance(model, DistributedDataParallel):
            return cls()
        if model.static_graph:
            raise ValueError(
                "dynamtl cannot train a DistributedDataParallel model built with static_graph=True "
                "(DDP then mistakes the per-task gradient passes for the backward pass): wrap the "
                "model without static_graph"
            )
        replicas = cls(model.process_group)
        return replicas if replicas.distributed else cls()

    @property
    def distributed(self) -> bool:
        """Whether more than one process holds the model."""
        return self.size > 1

    def means(self, tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
        """Every tensor (detached) averaged over the processes, ``None`` kept in place.

        One all-reduce of one flat buffer per call (in the promoted dtype of the tensors,
        which must share a device); every process must call it with tensors of the same
        shapes, in the same order.
        """
        detached = [None if t is None else t.detach() for t in tensors]
        present = [t for t in detached if t is not None]
        if not self.distributed or not present:
            return detached
        flat = torch.cat([t.reshape(-1) for t in present])
        dist.all_reduce(flat, group=self.group)
        flat /= self.size
        parts = iter(flat.split([t.numel() for t in present]))
        return [None if t is None else next(parts).view_as(t).to(t.dtype) for t in detached]

    def mean(self, tensor: Tensor) -> Tensor:
        """``tensor`` (detached) averaged over the processes; see :meth:`means`."""
        return self.means([tensor])[0]  # type: ignore[return-value]

    def mean_value(self, tensor: Tensor) -> Tensor:
        """``tensor`` with the value of its average over the processes and its own graph.

        Its gradient is this process's, which DDP (or :meth:`means`) then averages, so both
        value and gradient are those of the global batch. The value is bit-identical on
        every process (m + (t − t) = m for finite t).
        """
        if not self.distributed:
            return tensor
        return self.mean(tensor) + (tensor - tensor.detach())
