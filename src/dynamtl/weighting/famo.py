"""FAMO (Liu, Feng, Stone & Liu, NeurIPS 2023): weights that make every log-loss fall at one rate."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from dynamtl._helpers import intervals
from dynamtl.context import StepContext, widened
from dynamtl.facts import Facts
from dynamtl.weighting.base import LossWeighting, MetaOptimizerFactory, OwnOptimizer


class FAMO(OwnOptimizer, LossWeighting):
    r"""Fast Adaptive Multitask Optimization: logits ξ, learned from how fast each task's
    log-loss falls, set weights that decrease all task losses at a balanced rate.

    From *FAMO: Fast Adaptive Multitask Optimization* (Bo Liu, Yihao Feng, Peter Stone &
    Qiang Liu, NeurIPS 2023). With the shifted losses ℓᵢ = Lᵢ − mᵢ + ε (mᵢ a lower bound of
    Lᵢ, ``min_losses``, 0 by default) and z = softmax(ξ), the step's weights are

        λᵢ = c · zᵢ / ℓᵢ,   c = (Σⱼ zⱼ / ℓⱼ)⁻¹,

    the gradient of Σᵢ zᵢ log ℓᵢ rescaled by c, as in the paper: **Σᵢ λᵢ = 1**, 1/T of the
    scale of :class:`~dynamtl.Equal` (Σᵢ λᵢ = T), so at the same learning rate FAMO's steps
    are about T times smaller than Equal's (with SGD; Adam is insensitive to that scale).
    After a step, ξ moves against the gradient

        δ = J_z(ξ)ᵀ (log ℓ(t) − log ℓ(t+1)) = z ⊙ (Δ − zᵀΔ),   Δ = log ℓ(t) − log ℓ(t+1),

    so the weight of a task whose log-loss fell more than average goes down; ξ is trained
    by its own optimizer, Adam with learning rate ``lr`` and weight decay ``weight_decay``
    (the paper's ξ ← ξ − β(δ + γξ), β = ``lr``, γ = ``weight_decay``; its code uses Adam
    with β = 0.025 and tunes γ per data set, 1e-3 or 1e-2). ξ starts at 0 (equal z).

    Difference to the paper: its code measures ℓ(t+1) by a second forward pass on the
    *same* batch after the optimizer step. Here ℓ(t+1) is the next step's losses, on the
    *next* batch, so FAMO costs nothing beyond the losses: ξ is updated at the start of
    step t+1 (with J_z at the ξ that weighted step t), then step t+1 is weighted. The change
    of loss then mixes the effect of the step with the batch-to-batch noise of the losses;
    larger batches or a smaller ``lr`` reduce it. The paper's code also clips the model's
    gradient norm at 1 (``max_norm``); clip in your own loop
    (:meth:`~dynamtl.MultiTask.backward`) if you want that.

    A task whose loss has no gradient in a step (no labelled sample in the batch) gets λ = 0
    in that step and the others share the weight as FAMO over them would; ξ is updated
    only from the tasks present in both steps of a change. (Called as ``famo(losses)``
    FAMO does not know which tasks are absent.)

    FAMO needs only the losses, so it also works as ``loss = famo(losses)`` in any loop
    (one call per step). The previous losses and the optimizer's state are saved in the
    state dict.

    Args:
        lr: learning rate of the default Adam optimizer of ξ (β, 0.025 as in the paper).
        weight_decay: its weight decay (γ; 1e-3 by default, the paper's value on NYUv2).
        meta_optimizer: optional ``factory(params) -> optimizer`` replacing that Adam
            (``lambda p: torch.optim.SGD(p, lr=β, weight_decay=γ)`` is the paper's
            algorithm as written).
        min_losses: task name -> lower bound mᵢ of its loss (tasks not named: 0); needed
            for losses that can be negative.
        epsilon: ε, keeps ℓᵢ > 0 when Lᵢ reaches mᵢ (1e-8 as in the paper's code).

    >>> import torch
    >>> famo = FAMO().bind(["a", "b"])
    >>> famo.loss_weights(torch.tensor([1.0, 3.0]))  # z = (½, ½): λ ∝ 1/L, summing to 1
    tensor([0.7500, 0.2500])
    """

    facts = Facts(
        "famo", "FAMO", "losses", "Liu, Feng, Stone & Liu, FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023",
        options=("lr", "weight_decay", "min_losses", "epsilon"),
    )

    # buffers (registered in __init__)
    min_losses: Tensor
    previous_losses: Tensor
    has_previous: Tensor
    previous_present: Tensor

    option_ranges = intervals(lr="(0, inf)", weight_decay="[0, inf)", epsilon="[0, inf)")

    def __init__(
        self,
        *,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        meta_optimizer: MetaOptimizerFactory | None = None,
        min_losses: Mapping[str, float] | None = None,
        epsilon: float = 1e-8,
    ) -> None:
        super().__init__()
        self.lr, self.weight_decay, self.factory = lr, weight_decay, meta_optimizer
        self.given_min_losses = dict(min_losses or {})
        self.epsilon = epsilon
        self.logits = nn.Parameter(torch.zeros(0))
        self.register_buffer("min_losses", torch.zeros(0))
        self.register_buffer("previous_losses", torch.zeros(0))
        self.register_buffer("has_previous", torch.zeros((), dtype=torch.bool))
        self.register_buffer("previous_present", torch.zeros(0, dtype=torch.bool))

    def _on_bind(self) -> None:
        names = self.task_names or ()
        self.min_losses = torch.tensor([float(self.given_min_losses.get(n, 0.0)) for n in names])
        self.previous_losses = torch.zeros(len(names))
        self.previous_present = torch.ones(len(names), dtype=torch.bool)
        self.logits.data = torch.zeros(len(names))
        self._own_optimizer(self.logits, self.factory, lr=self.lr, weight_decay=self.weight_decay)

    def weights(self, ctx: StepContext) -> Tensor:
        return self.loss_weights(widened(ctx.losses.detach()), torch.tensor(ctx.present))

    def loss_weights(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        """λ from the losses; ``present``: which tasks have a gradient in this step (all by
        default). Absent tasks get λ = 0, the others share the weight among themselves.
        ``ValueError`` naming the task for a NaN or infinite loss of a present task, before
        ξ or the previous losses change (a NaN there would make every later weight NaN)."""
        current = losses.detach().to(self.logits)
        here = torch.ones_like(current, dtype=torch.bool) if present is None else present.to(current.device)
        self.refuse_bad_losses(current, here, "takes the log of each loss and of its fall from step to step",
                               "check that task's inputs and targets, or lower the learning rate")
        shifted = torch.where(here, self._shifted(torch.where(here, current, self.min_losses + 1.0)), 1.0)
        if bool(self.has_previous):
            both = here & self.previous_present
            if bool(both.any()):
                decrease = self._shifted(self.previous_losses).log() - shifted.log()
                self._update(decrease, both)
        self.previous_losses = torch.where(here, current, self.min_losses + 1.0)
        self.previous_present = here.clone()
        self.has_previous.fill_(True)
        ratio = torch.where(here, _softmax_over(self.logits.detach(), here) / shifted, 0.0)
        return (ratio / ratio.sum()).to(losses)

    def _shifted(self, losses: Tensor) -> Tensor:
        shifted = losses - self.min_losses + self.epsilon
        bad = shifted <= 0
        if bool(bad.any()):
            names = [n for n, b in zip(self.task_names or (), bad.tolist()) if b]
            raise ValueError(
                f"FAMO takes the log of L - min_loss + epsilon, which is <= 0 for task(s) {names} "
                f"(losses {losses.tolist()}, min_losses {self.min_losses.tolist()}): give a lower bound "
                "of those losses with FAMO(min_losses={task: bound})"
            )
        return shifted

    def _update(self, decrease: Tensor, tasks: Tensor) -> None:
        """One optimizer step on ξ with gradient J_z(ξ)ᵀ Δ, Δ = ``decrease`` of the log-losses,
        over the ``tasks`` (a mask) present in both steps (the others get no gradient)."""
        z = _softmax_over(self.logits.detach(), tasks)
        decrease = torch.where(tasks, decrease, 0.0)
        self._own_step(self.logits, torch.where(tasks, z * (decrease - (z * decrease).sum()), 0.0))


def _softmax_over(logits: Tensor, mask: Tensor) -> Tensor:
    """softmax of ``logits`` over the entries of ``mask``, 0 elsewhere."""
    return torch.softmax(logits.masked_fill(~mask, -math.inf), dim=0).masked_fill(~mask, 0.0)

