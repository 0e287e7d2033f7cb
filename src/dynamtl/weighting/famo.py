"""FAMO (Liu, Feng, Stone & Liu, NeurIPS 2023): weights that make every log-loss fall at one rate."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from dynamtl.facts import Facts
from dynamtl.tasks import task_indices
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
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"FAMO needs lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
        if epsilon < 0:
            raise ValueError(f"FAMO's epsilon must be >= 0, got {epsilon}")
        self.lr, self.weight_decay, self.factory = lr, weight_decay, meta_optimizer
        self.given_min_losses = dict(min_losses or {})
        self.epsilon = epsilon
        self.logits = nn.Parameter(torch.zeros(0))
        self.register_buffer("min_losses", torch.zeros(0))
        self.register_buffer("previous_losses", torch.zeros(0))
        self.register_buffer("has_previous", torch.zeros((), dtype=torch.bool))

    def _on_bind(self) -> None:
        names = self.task_names or ()
        if self.given_min_losses:
            task_indices(names, self.given_min_losses, role="min_losses")  # rejects unknown names
        self.min_losses = torch.tensor([float(self.given_min_losses.get(n, 0.0)) for n in names])
        self.previous_losses = torch.zeros(len(names))
        self.logits.data = torch.zeros(len(names))
        self._own_optimizer(self.logits, self.factory, lr=self.lr, weight_decay=self.weight_decay)

    def loss_weights(self, losses: Tensor) -> Tensor:
        current = losses.detach().to(self.logits)
        shifted = self._shifted(current)
        if bool(self.has_previous):
            self._update(self._shifted(self.previous_losses).log() - shifted.log())
        self.previous_losses = current.clone()
        self.has_previous.fill_(True)
        ratio = torch.softmax(self.logits.detach(), dim=0) / shifted
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

    def _update(self, decrease: Tensor) -> None:
        """One optimizer step on ξ with gradient J_z(ξ)ᵀ Δ, Δ = ``decrease`` of the log-losses."""
        z = torch.softmax(self.logits.detach(), dim=0)
        self._own_step(self.logits, z * (decrease - (z * decrease).sum()))

