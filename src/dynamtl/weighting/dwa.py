"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from dynamtl.facts import Facts
from dynamtl.weighting.base import LossWeighting


class DWA(LossWeighting):
    r"""Dynamic Weight Average from *End-to-End Multi-Task Learning with Attention* (MTAN).

    λᵢ(t) = T · exp(rᵢ(t−1)/τ) / Σⱼ exp(rⱼ(t−1)/τ), with rᵢ(t−1) = L̄ᵢ(t−1)/L̄ᵢ(t−2)
    the ratio of task i's average loss over the last two epochs. During the first two
    epochs λᵢ = 1. Tasks whose loss falls slowly get more weight.

    Every call records the losses into the running epoch average; call :meth:`end_epoch`
    at the end of each epoch (:class:`~dynamtl.MultiTask` forwards ``end_epoch()``).

    Args:
        temperature: τ, 2 in the paper; larger is closer to equal weights.

    >>> import torch
    >>> dwa = DWA().bind(["a", "b"])
    >>> for loss_a, loss_b in [(2.0, 2.0), (1.0, 2.0)]:
    ...     _ = dwa(torch.tensor([loss_a, loss_b])); dwa.end_epoch()
    >>> dwa.loss_weights(torch.ones(2))  # a's loss halved, b's did not move
    tensor([0.8756, 1.1244])
    """

    facts = Facts(
        "dwa", "DWA", "losses", "Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019",
        options=("temperature",),
    )

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"DWA's temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.register_buffer("epoch_sum", torch.zeros(0))
        self.register_buffer("epoch_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("history", torch.zeros(2, 0))  # the last two epoch averages, oldest first
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    def _on_bind(self) -> None:
        self.epoch_sum = torch.zeros(self.num_tasks, dtype=torch.float64)
        self.history = torch.zeros(2, self.num_tasks, dtype=torch.float64)

    def loss_weights(self, losses: Tensor) -> Tensor:
        self.epoch_sum += losses.detach().to(self.epoch_sum)
        self.epoch_count += 1
        if int(self.epochs) < 2:
            return torch.ones_like(losses)
        ratio = self.history[1] / self.history[0]
        return (self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)).to(losses)

    def end_epoch(self) -> None:
        if int(self.epoch_count) == 0:
            return
        self.history = torch.stack([self.history[1], self.epoch_sum / self.epoch_count])
        self.epochs += 1
        self.epoch_sum.zero_()
        self.epoch_count.zero_()
