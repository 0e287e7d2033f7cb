"""ExcessMTL: weights that follow each task's estimated excess risk (He et al., ICML 2024)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation.base import shared_parameters, shared_rows
from dynamtl.context import StepContext
from dynamtl.facts import Facts
from dynamtl.weighting.base import Weighting


class ExcessMTL(Weighting):
    r"""Robust multi-task learning with excess risks: weigh up the tasks that are furthest
    from their best reachable loss.

    The excess risk of task i (its loss minus the lowest it could reach) is estimated by a
    second-order Taylor expansion with a diagonal AdaGrad preconditioner, from the task's
    gradient gᵢ on the shared parameters (Equations 6–7 of the paper):

    .. math::

        S_i \leftarrow S_i + g_i \odot g_i, \qquad
        r_i = \sum_d \frac{g_{i,d}^2}{\sqrt{S_{i,d} + 10^{-7}}} ,

    scaled by the first step's value (r̃ᵢ = rᵢ / (rᵢ⁽⁰⁾ + 10⁻⁷), "scale processing", Section 3.2;
    or by the mean over ``warmup`` steps, during which the weights stay uniform). The
    weights p on the simplex then take an exponentiated-gradient step (Equation 9),

    .. math::

        p \leftarrow \operatorname{softmax}(\log p + \eta\, \tilde r), \qquad \lambda = T\, p ,

    from p = 1/T. From *Robust Multi-Task Learning with Excess Risks* (He, Zhou, Zhang,
    Ghazi, Zhu, Zhang, Zhao, ICML 2024). λ is T·p, summing to T like :class:`Equal` (as
    :class:`RLW` does), so that the learning rate compares; p itself is ``probabilities``.
    The per-task gradients come from :meth:`StepContext.task_gradients` (one backward pass
    per task, shared with the aggregation).

    Args:
        step_size: η > 0, the robust step size (default 0.01, the official code's
            ``--robust_step_size``; TorchJD and LibMTL default to 1).
        warmup: steps at uniform weights whose mean excess risks are the baseline r⁽⁰⁾
            (default 0: the first step's risks are the baseline and, their scaled value being 1
            for every task, p takes no step then; 0 and 1 are the same, the official code's
            behaviour; the paper's appendix collects three epochs).

    The scaled risks r̃ are about 1 for a task whose excess risk has not moved since its
    baseline: η is a step on numbers of order 1, and p moves by factors e^{η r̃} per step.
    They are scale-free (unchanged when a task's gradients are multiplied by a constant) only
    while the accumulated squares dominate the absolute 10⁻⁷: Sᵢ,d ≫ 10⁻⁷, i.e. gradient
    entries well above about 3·10⁻⁴, where rᵢ grows like |gᵢ|. Below that rᵢ ≈ Σ_d g²/√10⁻⁷
    grows like |gᵢ|², so a task with small gradients has r̃ moving with the square of their
    change, and the 10⁻⁷ in r⁽⁰⁾ + 10⁻⁷ shrinks r̃ once r⁽⁰⁾ is not well above 10⁻⁷ (a task
    whose gradients alone are 10⁴ times smaller takes a very different share of p; large
    models, whose per-entry gradients are often that small, are in this regime). The official
    code has the same √(S + 10⁻⁷); it divides by r⁽⁰⁾ with no ε (a zero baseline gives
    infinity there; here it is no baseline yet, see below).

    A raw, unscaled risk rᵢ = Σ_d |g_d| on a task's first step (what TorchJD's
    ``n_warmup_steps=0`` takes) is of the order of the number of shared parameters times
    the gradient's size; one such step with η = 1 puts all of p on one task, which later
    O(η) steps cannot undo; no step is taken on the risks before they are scaled.
    A small η (0.01, the default) keeps the weights near uniform over a few hundred steps;
    η = 1 lets a task whose relative excess risk stays above the others' take most of p
    within tens of steps.

    A task whose risk is still exactly 0 when its baseline would be taken (its first present
    steps had a zero gradient, e.g. an unlabelled batch under a masked-mean loss, or a zero
    mean over the warm-up) has no baseline yet: it keeps its p, like an absent task, and
    takes its baseline on its first step with a non-zero risk (r/r⁰ = 1 then, no step).
    p never reaches exactly 0 (it is kept at or above the smallest positive float64), so
    a task that has fallen far behind can still recover and p never becomes NaN.

    A *small but non-zero* first risk is a baseline all the same (as in the paper and the
    official code, which divides by it): a task whose first batch happens to give it a tiny
    gradient (one labelled sample with a small error, an auxiliary task near its optimum)
    has r̃ = r/r⁽⁰⁾ huge from then on, and p goes to it for good (a first risk 10⁻⁴ of the
    others' gives p ≈ [10⁻¹²⁵, 1, 10⁻¹²⁵] after one step at η = 0.01). Where first batches
    can be that unrepresentative, give ``warmup`` (the baseline is then a mean over several
    steps at uniform weights).

    A task without a graph in this step (no labelled sample) keeps its p, statistics and
    baseline; the present tasks share their mass of p, and their λ are T' p / Σ p over the T'
    present tasks (the weights of the step on those tasks alone).

    The accumulated squared gradients S (T × D over the shared parameters: memory as large
    as T copies of the shared parameters), the baseline and p are saved in the state dict.

    Differences to the official code: it starts from weights 1 (not on the simplex); here
    p starts at 1/T, as the paper (and TorchJD) do, and λ = T·p. Differences to TorchJD:
    its ``n_warmup_steps=0`` takes an exponentiated step on the first step's *unscaled* risks;
    ours (``warmup=0``) takes none, as the official code, and equals TorchJD's default
    ``n_warmup_steps=1``.
    """

    facts = Facts(
        "excess-mtl", "ExcessMTL", "gradients",
        "He et al., Robust Multi-Task Learning with Excess Risks, ICML 2024",
        "0", "T−1", options=("step_size", "warmup"),
    )

    option_ranges = intervals(step_size="(0, inf)", warmup="[0, inf)")

    def __init__(self, step_size: float = 0.01, warmup: int = 0) -> None:
        super().__init__()
        self.step_size = float(step_size)
        self.warmup = warmup
        self.squares: Tensor | None = None
        self.baseline: Tensor | None = None
        self.probabilities: Tensor | None = None
        self.steps = 0
        self._warmup_sum: Tensor | None = None

    def weights(self, ctx: StepContext) -> Tensor:
        grads = ctx.task_gradients()
        shared = shared_parameters(grads)
        losses = ctx.losses.detach()
        if not shared:
            return torch.ones_like(losses)
        here = torch.tensor(ctx.present)
        p = self.update(shared_rows(ctx, grads, shared), here)
        weights = torch.zeros_like(p)
        weights[here] = int(here.sum()) * p[here] / p[here].sum()
        return weights.to(losses)

    def update(self, rows: Tensor, present: Tensor | None = None) -> Tensor:
        """One step of the weights p (returned, on the simplex) from the task gradients
        ``rows`` ([T, D], float64 here). ``present``: the tasks with a graph in this step (all
        by default); the others keep their p, their statistics and their baseline, and the
        present ones share their mass.

        Raises:
            ValueError: ``rows`` is not 2-D or holds NaN/±∞ (a task's statistics and baseline
                would be NaN for good), or ``present`` is not a boolean vector of one entry
                per row.
        """
        name = type(self).__name__
        if rows.dim() != 2:
            raise ValueError(f"{name}.update takes rows [T, D] (one gradient per task), got shape {list(rows.shape)}")
        rows = rows.detach().double().cpu()
        bad = [i for i, finite in enumerate(rows.isfinite().all(dim=1).tolist()) if not finite]
        if bad:
            raise ValueError(f"{name}.update got non-finite gradient rows {bad} (task indices): their squares and "
                             "baseline would stay NaN and their p frozen; skip the step or fix the loss")
        if present is not None and (present.dtype != torch.bool or present.shape != (len(rows),)):
            raise ValueError(f"{name}.update's present must be a boolean tensor of shape [{len(rows)}] (one per "
                             f"task row), got {present.dtype} of shape {list(present.shape)}")
        here = torch.ones(len(rows), dtype=torch.bool) if present is None else present.cpu()
        if self.squares is None or self.squares.shape != rows.shape:
            self.squares = torch.zeros_like(rows)
            self.baseline, self.probabilities, self.steps, self._warmup_sum = None, None, 0, None
        if self.probabilities is None:
            self.probabilities = torch.full((len(rows),), 1.0 / len(rows), dtype=torch.float64)
        squared = rows * rows
        self.squares = self.squares + squared
        risks = (squared / torch.sqrt(self.squares + 1e-7)).sum(dim=1)
        self.steps += 1
        if self.steps <= self.warmup:
            self._warmup_sum = risks if self._warmup_sum is None else self._warmup_sum + risks
            return self.probabilities.clone()
        if self.baseline is None:
            self.baseline = torch.full_like(risks, torch.nan)
        starting = here & self.baseline.isnan()  # present tasks without a baseline yet
        from_warmup = torch.zeros_like(risks)
        if self.warmup > 0 and self._warmup_sum is not None:
            from_warmup = self._warmup_sum / self.warmup
        by_warmup = starting & (from_warmup > 0)
        by_now = starting & ~by_warmup & (risks > 0)  # a zero risk is no baseline: wait for a non-zero one
        self.baseline[by_warmup] = from_warmup[by_warmup]
        self.baseline[by_now] = risks[by_now]
        # a task's first step with a baseline of its own risks has r/r⁰ = 1: p takes no step (the official code)
        scaled = torch.where(by_now, torch.ones_like(risks), risks / (self.baseline + 1e-7))
        moving = here & ~self.baseline.isnan()  # a task still without a baseline keeps its p, like an absent one
        p = self.probabilities.clone()
        if moving.any():
            step = torch.softmax(p[moving].log() + self.step_size * scaled[moving], dim=0)
            p[moving] = p[moving].sum() * step.clamp_min(torch.finfo(step.dtype).tiny)
        self.probabilities = p
        return p.clone()

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "squares": self.squares, "baseline": self.baseline, "probabilities": self.probabilities,
            "steps": self.steps, "warmup_sum": self._warmup_sum,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.squares, self.baseline, self.probabilities = state["squares"], state["baseline"], state["probabilities"]
        self.steps, self._warmup_sum = int(state["steps"]), state["warmup_sum"]
