"""Model selection on the validation split: which epoch's model is tested."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from dynamtl.benchmarks.base import TaskSpec

CRITERION = (
    "mean over the primary tasks of the signed relative change of the headline validation metric "
    "from its value after the first epoch (higher is better; the earliest best epoch wins ties)"
)


class Selection:
    r"""Keeps the model of the best epoch by the validation score

        s(e) = (1/|P|) Σ_{p ∈ P} σ_p (m_p(e) − m_p(1)) / |m_p(1)|,

    with P the primary tasks (every task in multi-task mode), m_p the first (headline)
    metric of task p on the validation split, m_p(1) its value after the first epoch
    (1 in its place if that value is 0) and σ_p = +1 when higher is better, −1 otherwise.
    Relative changes put tasks of different scales on one footing, as Δ_MTL does; the
    test split is never looked at. A NaN score (a diverged model) is worse than any other;
    the first epoch is kept if no later one is better.
    """

    def __init__(self, primary: tuple[str, ...], specs: Mapping[str, TaskSpec]) -> None:
        self.headline = {task: specs[task].metrics[0] for task in primary}
        self.reference: dict[str, float] | None = None
        self.best_epoch: int | None = None
        self.best_score = float("-inf")
        self.best_model: dict[str, Tensor] | None = None
        self.best_metrics: dict[str, dict[str, float]] | None = None

    def score(self, metrics: Mapping[str, Mapping[str, float]]) -> float:
        if self.reference is None:
            self.reference = {task: metrics[task][m.name] for task, m in self.headline.items()}
        terms = []
        for task, metric in self.headline.items():
            reference = self.reference[task]
            sign = 1.0 if metric.higher_is_better else -1.0
            terms.append(sign * (metrics[task][metric.name] - reference) / (abs(reference) or 1.0))
        return sum(terms) / len(terms)

    def update(self, epoch: int, metrics: Mapping[str, Mapping[str, float]], model: nn.Module) -> tuple[float, bool]:
        """Score epoch ``epoch`` (1-based); keep a copy of ``model`` if it is the best so
        far. Returns (score, is best)."""
        score = self.score(metrics)
        best = self.best_epoch is None or _better(score, self.best_score)
        if best:
            self.best_epoch, self.best_score = epoch, score
            self.best_model = copy.deepcopy(model.state_dict())
            self.best_metrics = {task: dict(values) for task, values in metrics.items()}
        return score, best

    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "best_model": self.best_model,
            "best_metrics": self.best_metrics,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reference, self.best_epoch = state["reference"], state["best_epoch"]
        self.best_score, self.best_model = state["best_score"], state["best_model"]
        self.best_metrics = state["best_metrics"]


def _better(score: float, best: float) -> bool:
    return score > best or (math.isnan(best) and not math.isnan(score))
