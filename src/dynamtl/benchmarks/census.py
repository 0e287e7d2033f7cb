"""Census-Income (KDD): the MMoE multi-task benchmark of income, marital status and education."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dynamtl.benchmarks.base import (
    Benchmark,
    MultiTaskTensors,
    Splits,
    TaskSpec,
    TrainingDefaults,
)
from dynamtl.data._tabular import MultiHeadMLP, fit_standardisation, hold_out
from dynamtl.data.census import N_FEATURES, NUMERIC, TASKS, CensusIncome
from dynamtl.metrics import ACCURACY, AUC

VAL_FRACTION = 10
HIDDEN = (256, 128)


class Census(Benchmark):
    """The Census-Income (KDD) benchmark of MMoE (Ma et al., *Modeling task relationships in
    multi-task learning with multi-gate mixture-of-experts*, KDD 2018): three binary tasks on
    the records of the 1994–95 US Current Population Surveys (UCI, CC BY 4.0; see
    :class:`~dynamtl.data.census.CensusIncome` for the files and columns).

    Tasks, each a 2-logit cross-entropy, metrics AUC (headline) and accuracy:

    * ``"income"``: income above $50,000 (6.2 % of the training file); the primary task;
    * ``"marital"``: marital status "Never married" (43.3 %), MMoE's second task;
    * ``"education"``: education at least "Some college but no degree" (33.6 %), MMoE's
      second group's "education level at least college".

    The three label columns and the instance weight are never features, so that any subset
    of tasks sees the same inputs (MMoE keeps every other column, and education as a feature
    in its income/marital group; "detailed household and family stat" spells out "never
    marr", so the marital task is easy: AUC ≈ 0.99, as in MMoE). Inputs are 486 columns:
    479 one-hot categorical columns and 7 numeric columns standardised with the mean and
    standard deviation of the training split only.

    Splits: validation is a tenth of ``census-income.data`` (19,952 records) drawn by
    ``seed``; training is the rest (179,571, or the first ``limit`` of them in seeded order);
    test is the whole ``census-income.test`` (99,762).

    Model: a shared bottom MLP 486–256–128 (ReLU) and one linear head per task.

    >>> Census().model({"income": 2, "marital": 2})(torch.zeros(3, 486))["income"].shape
    torch.Size([3, 2])
    """

    name = "census"
    description = "UCI Census-Income (KDD), MMoE's benchmark: income > $50K, never married, college education"
    primary = ("income",)
    defaults = TrainingDefaults(epochs=5, batch_size=256, lr=1e-3)
    representation = "trunk"

    def __init__(self) -> None:
        self.specs = {task: TaskSpec(F.cross_entropy, (AUC, ACCURACY), 2) for task in TASKS}

    def splits(self, root: Path, seed: int, limit: int | None = None) -> Splits:
        data, n_records = CensusIncome(root), CensusIncome.SIZES["train"]
        train, val = hold_out(torch.arange(n_records), n_records // VAL_FRACTION, seed, limit)
        parts = {"train": data.load("train", train), "val": data.load("train", val), "test": data.load("test")}
        numeric = slice(N_FEATURES - len(NUMERIC), None)
        mean, std = fit_standardisation(parts["train"][0][:, numeric])
        for inputs, _ in parts.values():
            inputs[:, numeric] = ((inputs[:, numeric] - mean) / std).float()
        return Splits(**{name: MultiTaskTensors(inputs, targets) for name, (inputs, targets) in parts.items()})

    def model(self, heads: Mapping[str, int]) -> nn.Module:
        return MultiHeadMLP(N_FEATURES, HIDDEN, heads)
