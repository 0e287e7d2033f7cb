"""Any dynamtl method inside PyTorch Lightning (``pip install 'dynamtl[lightning]'``).

:class:`MultiTaskModule` is a :class:`lightning.pytorch.LightningModule` that trains a
model with :class:`~dynamtl.MultiTask` under Lightning's *manual optimisation*: each
training step computes the method's gradients (``MultiTask.backward``) and steps the
optimizer through Lightning, so that Lightning's strategies and precision plugins apply:

* **DDP** (``strategy="ddp"``, any backend): every process takes the step one process
  would take on the global batch, as under torchrun (:mod:`dynamtl.distributed`): the
  task gradients, meta-gradients and losses are averaged over the processes, and a step
  made of one backward pass (``Sum``) is synchronised by Lightning's DDP reducer. Lightning
  gives every process its shard of each loader (``DistributedSampler``).
* **precision** ``"bf16-mixed"`` / ``"16-mixed"``: the forward passes run under
  Lightning's autocast; with ``"16-mixed"`` dynamtl scales the losses with Lightning's
  ``GradScaler`` and Lightning's optimizer step unscales, skips on overflow and updates
  the scale (see :mod:`dynamtl.precision`).
* **meta batches** (Auto-Lambda, HydaLearn with ``gain_batch="meta"``): give the trainer
  a dict of two loaders, ``trainer.fit(module, {"train": train_loader, "meta":
  meta_loader})``; Lightning's ``CombinedLoader`` cycles the shorter one.
* **extra batches** (SDMGrad, MoDo read three independent mini-batches per step): give
  ``trainer.fit(module, {"train": train_loader, "extra": [loader_1, loader_2]})`` (with
  ``"meta"`` as well if the weighting needs it), each extra loader shuffled independently
  of the others; a step without them is refused, naming this fix.
* **logging**: the task losses and weights of every step go through ``self.log_dict``
  (``train/loss/TASK``, ``train/weight/TASK``) to whatever logger the trainer has.
* **checkpoints**: the weighting's and aggregation's state (λ and its optimizer,
  histories…) is saved in Lightning's checkpoint under ``"dynamtl"`` and restored with it;
  the model and optimizer are Lightning's as usual.

The weighting and aggregation are *not* submodules of the LightningModule, so that
Lightning's DDP wrapper holds the model's parameters only (a weighting's own parameters
get no gradient in most steps, which DDP would report as unused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import nn

from dynamtl._helpers import check_model_arguments
from dynamtl.aggregation.base import Aggregation
from dynamtl.distributed import Replicas
from dynamtl.objective import Objective
from dynamtl.step import MultiTask, StepInfo, _claim_and_bind, _release
from dynamtl.tasks import Tasks
from dynamtl.weighting.base import Weighting
from dynamtl.weighting.equal import Equal

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# the names of the loaders of a combined training batch: {"train": ..., "meta": ..., "extra": [...]}
_NAMED_LOADERS = ({"train", "meta"}, {"train", "extra"}, {"train", "meta", "extra"})


class MultiTaskModule(pl.LightningModule):
    """Trains ``model`` on ``tasks`` with a dynamtl weighting and aggregation in Lightning.

    Args:
        model: returns ``{task: prediction}`` (see :class:`~dynamtl.Tasks`).
        tasks: the tasks and their losses.
        optimizer: ``factory(parameters) -> optimizer`` for the model's parameters, e.g.
            ``lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)``; parameters of the
            weighting that the model's optimizer trains (Uncertainty's) are added to it as
            their own group, without weight decay.
        weighting, aggregation, representation, check_finite: as in :class:`~dynamtl.MultiTask`.

    A training batch is a batch of :class:`~dynamtl.Tasks`, or ``{"train": batch,
    "meta": meta_batch}`` and/or ``"extra": [batch_1, batch_2]`` when the trainer was given
    loaders under those names. The
    training step returns nothing (manual optimisation); ``validation_step`` logs the
    task losses as ``val/loss/TASK``. :attr:`multitask` is the :class:`~dynamtl.MultiTask`
    of the run (built at the first step, once the optimizer, the precision plugin and the
    process group exist), :attr:`last_step` the :class:`~dynamtl.StepInfo` of the last step.

    Raises:
        ValueError: a weighting that needs a meta batch gets a batch without ``"meta"``
            (the message names the fix).
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Tasks,
        optimizer: OptimizerFactory,
        *,
        weighting: Weighting | None = None,
        aggregation: Aggregation | None = None,
        representation: str | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.tasks = tasks
        self.optimizer_factory = optimizer
        # a tuple, so that nn.Module does not register them as submodules (see the module doc)
        # one method object per run: refused if another MultiTask(Module) holds it (see _build); a
        # per-task option of either that does not fit the tasks is refused now, all of them at once
        methods = _claim_and_bind([weighting or Equal(), *([] if aggregation is None else [aggregation])], self, tasks)
        self._method = (methods[0], None if aggregation is None else methods[1], representation, check_finite)
        trainable = tuple(name for name, p in model.named_parameters() if p.requires_grad)
        for method in self._method[:2]:
            if method is not None:  # an option naming a parameter the model lacks is refused now
                check_model_arguments(method, trainable)
        self.multitask: MultiTask | None = None
        self.last_step: StepInfo | None = None
        self._restored: dict[str, Any] | None = None

    @property
    def weighting(self) -> Weighting:
        return self._method[0]

    def forward(self, *args: Any) -> Any:
        return self.model(*args)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = self.optimizer_factory(self.model.parameters())
        own = self.weighting.model_optimizer_parameters()
        if own:
            optimizer.add_param_group({"params": own, "weight_decay": 0.0})
        return optimizer

    def _build(self) -> MultiTask:
        """The run's MultiTask, with Lightning's optimizer, scaler and processes."""
        weighting, aggregation, representation, check_finite = self._method
        raw = self._optimizer().optimizer
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        for method in (weighting, aggregation):
            if method is not None:  # handed on to this module's own MultiTask
                _release(method, self)
        mtl = MultiTask(
            self.model, self.tasks, raw, weighting=weighting, aggregation=aggregation,
            representation=representation, check_finite=check_finite, scaler=scaler,
        )
        if self.trainer.world_size > 1 and dist.is_initialized():
            mtl.objective.replicas = Replicas(dist.group.WORLD)
        mtl.precision.before_backward = self.trainer.strategy.pre_backward
        if self._restored is not None:
            mtl.load_state_dict(self._restored)
            self._restored = None
        return mtl

    def _optimizer(self) -> LightningOptimizer:
        optimizer = self.optimizers()
        assert isinstance(optimizer, LightningOptimizer), "configure_optimizers returns one optimizer"
        return optimizer

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if self.multitask is None:
            self.multitask = self._build()
        meta_batch, extra_batches = None, []
        if isinstance(batch, Mapping) and set(batch) in _NAMED_LOADERS:
            batch, meta_batch, extra_batches = batch["train"], batch.get("meta"), list(batch.get("extra", []))
        if self.weighting.needs_meta_batch and meta_batch is None:
            raise ValueError(
                f"{type(self.weighting).__name__} needs meta batches: trainer.fit(module, "
                "{'train': train_loader, 'meta': meta_loader})"
            )
        needed = self.multitask.aggregation.batches_per_step - 1
        if needed and not extra_batches:
            raise ValueError(
                f"{type(self.multitask.aggregation).__name__} reads {needed + 1} independent mini-batches per step: "
                f"trainer.fit(module, {{'train': train_loader, 'extra': [{needed} more loaders of the training set, "
                "each shuffled independently]})"
            )
        optimizer = self._optimizer()
        optimizer.zero_grad()
        info = self.last_step = self.multitask.backward(batch, meta_batch, extra_batches=extra_batches)
        optimizer.step()
        logged = {f"train/{k}": float(v) for k, v in info.as_dict().items() if k != "seconds"}
        self.log_dict(logged, on_step=True, on_epoch=False, batch_size=_batch_size(batch))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        losses = Objective(self.model, self.tasks).losses(batch)
        self.log_dict({f"val/loss/{n}": v for n, v in zip(self.tasks.names, losses)}, sync_dist=True,
                      batch_size=_batch_size(batch))

    def on_train_epoch_end(self) -> None:
        if self.multitask is not None:
            self.multitask.end_epoch()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.multitask is not None:
            checkpoint["dynamtl"] = self.multitask.state_dict()
        elif self._restored is not None:
            checkpoint["dynamtl"] = self._restored

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("dynamtl")
        if state is None:
            return
        if self.multitask is not None:
            self.multitask.load_state_dict(state)
        else:
            self._restored = state


def _batch_size(batch: Any) -> int:
    """The number of samples of a batch of :class:`~dynamtl.Tasks` (of its first task for
    multi-input batches)."""
    if isinstance(batch, Mapping):
        batch = next(iter(batch.values()))
    return len(batch[1] if isinstance(batch[1], torch.Tensor) else next(iter(batch[1].values())))
