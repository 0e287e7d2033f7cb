"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dynamtl.facts import Facts
from dynamtl.weighting.base import PresentTasksWeighting


class Uncertainty(PresentTasksWeighting):
    r"""Homoscedastic-uncertainty weighting: learn one log-variance sᵢ = log σᵢ² per task.

    The loss is Σᵢ ½ e^{−sᵢ} Lᵢ + ½ sᵢ, the Gaussian negative log-likelihood form of
    *Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and
    Semantics* (Kendall et al., 2018), used for every task (the paper's classification
    variant differs only by a factor 2 on the weight). So λᵢ = ½ e^{−sᵢ} and the
    regularizer is ½ Σ sᵢ. At the optimum in sᵢ, e^{sᵢ} = Lᵢ: tasks with larger loss get
    smaller weight. s starts at 0 (λᵢ = ½).

    The sᵢ are parameters trained by the model's optimizer: :class:`~dynamtl.MultiTask`
    adds them as their own parameter group (no weight decay) when the optimizer lacks
    them; in a loop of your own, give ``weighting.parameters()`` to your optimizer after
    ``bind``.

    A task whose loss has no gradient in a step (no labelled sample in the batch) leaves
    its ½ sᵢ out of that step's regularizer, so sᵢ does not drift while the task is absent
    (its ½ e^{−sᵢ} Lᵢ term is constant then, with no gradient for θ or sᵢ).

    Stability: at the optimum λᵢ = 1/(2Lᵢ), so a task whose training loss falls toward 0 (an
    easy classification task) gets a weight without bound, and the model's effective
    learning rate on it grows with the weight. With the model's own SGD settings (a learning
    rate tuned for equal weights, momentum 0.9) the sᵢ follow each batch's loss within a few
    steps, the weights swing by an order of magnitude and the large-weight steps can diverge:
    in ``examples/digits.py`` (lr 0.05, momentum 0.9) the digit accuracy was 50–89 % over
    seeds and thread counts, where the other methods reach 95–97 %. Give the sᵢ a parameter
    group of their own without momentum (or a lower learning rate) before building
    ``MultiTask``, which then leaves it as it is::

        weighting = Uncertainty(tasks=names)
        optimizer.add_param_group({"params": list(weighting.parameters()), "momentum": 0.0, "weight_decay": 0.0})

    Args:
        tasks: optionally the task names, to bind at once.

    >>> import torch
    >>> u = Uncertainty(tasks=["a", "b"])
    >>> u({"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    tensor(3., grad_fn=<AddBackward0>)
    """

    facts = Facts(
        "uncertainty", "Uncertainty", "losses",
        "Kendall, Gal & Cipolla, Multi-Task Learning Using Uncertainty to Weigh Losses, CVPR 2018",
    )

    def __init__(self, tasks: list[str] | None = None) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(0))
        if tasks is not None:
            self.bind(tasks)

    def _on_bind(self) -> None:
        with torch.no_grad():
            self.log_vars.data = torch.zeros(self.num_tasks, dtype=self.log_vars.dtype, device=self.log_vars.device)

    def loss_weights(self, losses: Tensor) -> Tensor:
        return 0.5 * torch.exp(-self.log_vars)

    def regularizer(self) -> Tensor:
        return 0.5 * self.present_sum(self.log_vars)
