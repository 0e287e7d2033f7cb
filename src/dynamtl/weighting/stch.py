"""STCH: smooth Tchebycheff scalarisation of the losses (Lin et al., ICML 2024)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.context import StepContext, widened
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
    (Lin, Zhang, Liu, Zhang, Kwong, ICML 2024), Equation 7. Computed in float64 as a softmax
    of the scores minus their maximum, so large losses, preferences up to 1e30, small μ and
    half-precision losses do not overflow into NaN weights; a NaN or infinite loss raises
    ``ValueError`` naming the task.

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
        return self.loss_weights(widened(ctx.losses.detach()), torch.tensor(ctx.present))

    def loss_weights(self, losses: Tensor, present: Tensor | None = None) -> Tensor:
        """λ from the losses; ``present``: which tasks have a loss with a graph in this step
        (all by default). Absent tasks get λ = 0; the smooth maximum is over the others.
        ``ValueError`` naming the task for a NaN or infinite loss of a present task.

        Computed in float64 as p·softmax((s − max s)/μ), s = p ⊙ (L − z): a preference of 1e30,
        a loss near float32's largest value or μ = 1e-30 neither overflows nor gives NaN; the
        weights are returned in the losses' dtype (float32 for half-precision losses)."""
        names = self.task_names or ()
        dtype, device = widened(losses).dtype, losses.device
        values = losses.detach().double().cpu()
        here = torch.ones(len(values), dtype=torch.bool) if present is None else present.cpu().bool()
        self.refuse_bad_losses(values, here, "takes a smooth maximum of the losses",
                               "check that task's inputs and targets, or lower the learning rate")
        if self.preference is None:
            p = torch.full((len(names),), 1.0 / max(int(here.sum()), 1), dtype=torch.float64)
        else:
            p = torch.tensor([float(self.preference.get(n, 0.0)) for n in names], dtype=torch.float64)
        z = torch.tensor([float((self.ideal or {}).get(n, 0.0)) for n in names], dtype=torch.float64)
        scores = torch.where(here, p * (values - z), torch.full_like(values, -torch.inf))
        weights = torch.zeros_like(values)
        if bool(here.any()):
            # shifted by the maximum before dividing by μ: the largest score is exactly 0
            shifted = torch.where(here, (scores - scores[here].max()) / self.mu, scores)
            weights = torch.where(here, p * torch.softmax(shifted, dim=0), weights)
        return weights.to(dtype=dtype, device=device)
