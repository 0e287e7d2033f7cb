"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.context import StepContext, widened
from dynamtl.facts import Facts
from dynamtl.weighting.base import LossWeighting


class DWA(LossWeighting):
    r"""Dynamic Weight Average from *End-to-End Multi-Task Learning with Attention* (MTAN).

    λᵢ(t) = T · exp(rᵢ(t−1)/τ) / Σⱼ exp(rⱼ(t−1)/τ), with rᵢ(t−1) = L̄ᵢ(t−1)/L̄ᵢ(t−2)
    the ratio of task i's average loss over the last two epochs. During the first two
    epochs λᵢ = 1. Tasks whose loss falls slowly get more weight.

    Every call records the losses into the running epoch average; call :meth:`end_epoch`
    at the end of each epoch (:class:`~dynamtl.MultiTask` forwards ``end_epoch()``).

    A task whose loss has no gradient in a step (no labelled sample in the batch) does not
    enter that epoch's average: its average is over the steps where it had one, the last
    known average carries over an epoch where it had none, and its ratio is 1 until it has
    two averages.

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

    # buffers (registered in __init__)
    epoch_sum: Tensor
    epoch_count: Tensor
    history: Tensor
    epochs: Tensor

    option_ranges = intervals(temperature="(0, inf)")

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = temperature
        self.register_buffer("epoch_sum", torch.zeros(0))
        self.register_buffer("epoch_count", torch.zeros(0, dtype=torch.long))  # per task
        self.register_buffer("history", torch.zeros(2, 0))  # the last two epoch averages, oldest first
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    def _on_bind(self) -> None:
        self.epoch_sum = torch.zeros(self.num_tasks, dtype=torch.float64)
        self.epoch_count = torch.zeros(self.num_tasks, dtype=torch.long)
        self.history = torch.zeros(2, self.num_tasks, dtype=torch.float64)

    def weights(self, ctx: StepContext) -> Tensor:
        return self.loss_weights(widened(ctx.losses.detach()), torch.tensor(ctx.present))

    def loss_weights(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        """λ from the epoch history; ``losses`` join the running averages of the tasks
        ``present`` (a mask; all by default)."""
        device = self.epoch_sum.device
        here = torch.ones(self.num_tasks, dtype=torch.bool, device=device) if present is None else present.to(device)
        self.epoch_sum += torch.where(here, losses.detach().to(self.epoch_sum), 0.0)
        self.epoch_count += here.to(self.epoch_count)
        if int(self.epochs) < 2:
            return torch.ones_like(losses)
        known = self.history[0] > 0
        ratio = torch.where(known, self.history[1] / torch.where(known, self.history[0], 1.0), 1.0)
        return (self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)).to(losses)

    def end_epoch(self) -> None:
        if int(self.epoch_count.sum()) == 0:
            return
        seen = self.epoch_count > 0
        average = torch.where(seen, self.epoch_sum / self.epoch_count.clamp(min=1), self.history[1])
        self.history = torch.stack([self.history[1], average])
        self.epochs += 1
        self.epoch_sum.zero_()
        self.epoch_count.zero_()
