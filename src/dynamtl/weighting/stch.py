"""STCH: smooth Tchebycheff scalarisation of the losses (Lin et al., ICML 2024)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.context import StepContext
from dynamtl.facts import Facts
from dynamtl.weighting.base import LossWeighting


class STCH(LossWeighting):
    r"""Smooth Tchebycheff scalarisation: a smooth maximum of the preference-weighted losses.

    .. math::

        S(L) = \mu \log \sum_i \exp\!\Big(\frac{p_i (L_i - z_i)}{\mu}\Big), \qquad
        \lambda_i = \frac{\partial S}{\partial L_i}
                  = p_i\, \operatorname{softmax}\!\Big(\frac{p \odot (L - z)}{\mu}\Big)_i ,

    so that the gradient of Σᵢ λᵢLᵢ (λ held constant) is the gradient of S: the step descends
    S, a smooth approximation of maxᵢ pᵢ(Lᵢ − zᵢ) that is within μ log T of it and tends
    to it as μ → 0. The task that is worst off (relative to its ideal value zᵢ) gets most
    of the weight. From *Smooth Tchebycheff Scalarization for Multi-Objective Optimization*
    (Lin, Zhang, Liu, Zhang, Kwong, ICML 2024), Equation 7. Computed as a softmax, so
    large losses and small μ do not overflow.

    A task without a graph in this step (no labelled sample) is left out: λ = 0, the
    maximum is over the others, and the default preference is 1/T over them.

    The weights sum to Σᵢ pᵢ softmaxᵢ ≤ maxᵢ pᵢ (1/T with the uniform preference): the
    gradient is that of S, smaller than Equal's Σᵢ Lᵢ; scale the learning rate, or the
    preference, to compare at equal step sizes.

    Args:
        mu: the smoothing μ > 0 (default 1; the paper tries 0.01 to 1 and finds no value
            best everywhere).
        preference: task name -> pᵢ ≥ 0 (tasks not named: 0); default 1/T for every task,
            the paper's uniform preference on the simplex. Its scale matters (the weights
            grow with it), so each value is 0 or between 1e-30 and 1e30.
        ideal: task name -> zᵢ, the ideal (lowest reachable) value of the loss; default 0
            for every task (losses ≥ 0).

    Differences to the paper: its multi-task experiments normalise the losses by their
    values in a warm-up epoch and use log-losses; here S is taken on the losses as given
    (put a transform in the task's loss to reproduce that).

    >>> import torch
    >>> w = STCH(mu=1.0).bind(["a", "b"])
    >>> w.loss_weights(torch.tensor([2.0, 2.0]))
    tensor([0.2500, 0.2500])
    """

    facts = Facts(
        "stch", "STCH", "losses",
        "Lin, Zhang, Liu, Zhang & Kwong, Smooth Tchebycheff Scalarization for Multi-Objective Optimization, ICML 2024",
        options=("mu", "preference", "ideal"),
    )

    option_ranges = intervals(mu="(0, inf)", preference="[0, inf)")
    weight_options = ("preference",)

    def __init__(
        self, mu: float = 1.0, preference: Mapping[str, float] | None = None, ideal: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        self.mu = float(mu)
        self.preference = None if preference is None else dict(preference)
        self.ideal = None if ideal is None else dict(ideal)

    def weights(self, ctx: StepContext) -> Tensor:
        return self.loss_weights(ctx.losses.detach(), torch.tensor(ctx.present))

    def loss_weights(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        """λ from the losses; ``present``: which tasks have a loss with a graph in this step
        (all by default). Absent tasks get λ = 0; the smooth maximum is over the others."""
        names = self.task_names or ()
        dtype, device = losses.dtype, losses.device
        here = torch.ones_like(losses, dtype=torch.bool) if present is None else present.to(device)
        if self.preference is None:
            p = torch.full((len(names),), 1.0 / max(int(here.sum()), 1), dtype=dtype, device=device)
        else:
            p = torch.tensor([float(self.preference.get(n, 0.0)) for n in names], dtype=dtype, device=device)
        z = torch.tensor([float((self.ideal or {}).get(n, 0.0)) for n in names], dtype=dtype, device=device)
        scores = torch.where(here, p * (losses - z) / self.mu, torch.full_like(losses, -torch.inf))
        return torch.where(here, p * torch.softmax(scores, dim=0), torch.zeros_like(losses))
