"""IMTL-L: learned loss scales that make every scaled loss equal to 1 (Liu et al., ICLR 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dynamtl.facts import Facts
from dynamtl.weighting.base import PresentTasksWeighting


class IMTLL(PresentTasksWeighting):
    r"""Impartial multi-task learning, loss part: learn a scale e^{sᵢ} per task.

    The loss is Σᵢ (e^{sᵢ} Lᵢ − sᵢ): λᵢ = e^{sᵢ} and the regularizer is −Σᵢ sᵢ. The
    sᵢ are trained by the model's optimizer on the same loss; its derivative e^{sᵢ}Lᵢ − 1
    vanishes where e^{sᵢ}Lᵢ = 1, so the scaled losses are all driven towards 1 (the paper's
    "impartial" loss scales). s starts at 0 (λᵢ = 1, Equal).

    From *Towards Impartial Multi-task Learning* (Liu, Li, Kuang, Xue, Chen, Yang, Liao,
    Zhang, ICLR 2021), Section 3.2. The paper's **IMTL** (hybrid) combines this weighting
    with its gradient part :class:`~dynamtl.IMTLG`, which then balances the gradients of
    the scaled losses: ``MultiTask(..., weighting=IMTLL(), aggregation=IMTLG())``, on the
    command line ``imtl-l+imtl-g``.

    As with :class:`~dynamtl.Uncertainty`, :class:`~dynamtl.MultiTask` adds s to the
    optimizer as its own parameter group (no weight decay); in a loop of your own, give
    ``weighting.parameters()`` to your optimizer after ``bind``.

    A task without a graph in this step (no labelled sample) has no −sᵢ term either, so its
    scale does not drift while it is absent.

    Args:
        tasks: optionally the task names, to bind at once.

    Differences to the paper: none in the loss; as in the official code the scales are
    trained with the network's optimizer.

    >>> import torch
    >>> w = IMTLL(tasks=["a", "b"])
    >>> w({"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    tensor(6., grad_fn=<AddBackward0>)
    """

    facts = Facts(
        "imtl-l", "IMTL-L", "losses",
        "Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, Towards Impartial Multi-task Learning, ICLR 2021",
    )

    def __init__(self, tasks: list[str] | None = None) -> None:
        super().__init__()
        self.log_scales = nn.Parameter(torch.zeros(0))
        if tasks is not None:
            self.bind(tasks)

    def _on_bind(self) -> None:
        with torch.no_grad():
            scales = self.log_scales
            scales.data = torch.zeros(self.num_tasks, dtype=scales.dtype, device=scales.device)

    def loss_weights(self, losses: Tensor) -> Tensor:
        return torch.exp(self.log_scales)

    def regularizer(self) -> Tensor:
        return -self.present_sum(self.log_scales)
