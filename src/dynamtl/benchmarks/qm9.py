"""QM9: twelve quantum-chemical properties regressed from Coulomb-matrix eigenvalues."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from dynamtl._helpers import seeded_permutation
from dynamtl.benchmarks.base import (
    Benchmark,
    MultiTaskTensors,
    Splits,
    TaskSpec,
    TrainingDefaults,
)
from dynamtl.data._tabular import MultiHeadMLP, fit_standardisation, hold_out
from dynamtl.data.qm9 import MAX_ATOMS, TARGETS, QM9Molecules
from dynamtl.metrics import Metric, mean_absolute_error

TEST_SIZE = 10_000
VAL_SIZE = 10_000
TEST_SEED = 2014  # fixes the test molecules, the same for every seed
HIDDEN = (256, 256)


class QM9(Benchmark):
    """QM9 (Ramakrishnan et al., Scientific Data 2014, CC BY 4.0; see
    :class:`~dynamtl.data.qm9.QM9Molecules` for the files): the 12 standard properties of
    130,831 small organic molecules, each a scalar regression task.

    Tasks (:data:`~dynamtl.data.qm9.TARGETS`, units of the published data): ``mu`` (D),
    ``alpha`` (a₀³), ``homo``, ``lumo``, ``gap`` (Ha), ``r2`` (a₀²), ``zpve``, ``U0``, ``U``,
    ``H``, ``G`` (Ha), ``cv`` (cal/(mol K)). The multi-task literature (Nash-MTL, FAMO, …)
    uses the 11 of them without ``gap`` (``gap`` = ``lumo`` − ``homo``): pass those names
    to select them. The primary task is ``gap``, the HOMO–LUMO gap, for which ``homo`` and
    ``lumo`` are natural auxiliaries.

    Inputs: the 29 Coulomb-matrix eigenvalues of each molecule, standardised per column with
    the training split's statistics.

    Targets and metric: every target is stored standardised with the mean and standard
    deviation of the training split, the model predicts standardised values and the loss
    is the mean squared error on that scale, so that all tasks start on an equal footing.
    The metric ``mae`` is the mean absolute error in the original units: the standardised
    error times the training standard deviation. Those statistics are those of the latest
    :meth:`splits` call of this instance, kept in :attr:`statistics` (``task -> (mean,
    std)``, original units; ``prediction * std + mean`` undoes the standardisation); the
    metrics raise ``ValueError`` before any :meth:`splits` call. Evaluate a model with the
    instance that made its data.

    Splits: test is a fixed set of 10,000 molecules (drawn with the constant seed
    ``TEST_SEED``, the same for every ``seed``); validation is 10,000 of the others drawn by
    ``seed``; training is the remaining 110,831 (the first ``limit`` of them in seeded order).

    Model: a shared MLP 29–256–256 (ReLU) and one linear head per task, returning ``[N]``
    per task (heads of width 1).

    >>> import torch
    >>> QM9().model({"gap": 1, "homo": 1})(torch.zeros(4, 29))["gap"].shape
    torch.Size([4])
    """

    name = "qm9"
    description = "QM9: 12 molecular properties from Coulomb-matrix eigenvalues, MAE in the published units"
    primary = ("gap",)
    defaults = TrainingDefaults(epochs=30, batch_size=128, lr=1e-3)
    representation = "trunk"

    def __init__(self) -> None:
        self.statistics: dict[str, tuple[float, float]] = {}
        self.specs = {
            task: TaskSpec(F.mse_loss, (Metric("mae", partial(self._mae, task), higher_is_better=False),), 1)
            for task in TARGETS
        }

    def splits(self, root: Path, seed: int, limit: int | None = None) -> Splits:
        eigenvalues, targets = QM9Molecules(root).load()
        order = seeded_permutation(len(eigenvalues), TEST_SEED)
        test, pool = order[:TEST_SIZE], order[TEST_SIZE:]
        train, val = hold_out(pool, VAL_SIZE, seed, limit)
        feature_mean, feature_std = fit_standardisation(eigenvalues[train])
        target_mean, target_std = fit_standardisation(targets[train])
        self.statistics = {
            task: (float(mean), float(std)) for task, mean, std in zip(TARGETS, target_mean, target_std)
        }

        def split(rows: Tensor) -> MultiTaskTensors:
            inputs = ((eigenvalues[rows] - feature_mean) / feature_std).float()
            standardised = ((targets[rows] - target_mean) / target_std).float()
            return MultiTaskTensors(inputs, {task: standardised[:, i].contiguous() for i, task in enumerate(TARGETS)})

        return Splits(train=split(train), val=split(val), test=split(test))

    def model(self, heads: Mapping[str, int]) -> nn.Module:
        return MultiHeadMLP(MAX_ATOMS, HIDDEN, heads)

    def _mae(self, task: str, predictions: Tensor, targets: Tensor) -> float:
        """The mean absolute error of standardised ``predictions`` in ``task``'s original units."""
        if task not in self.statistics:
            raise ValueError(
                f"the QM9 metrics need the target statistics of a training split: call splits(root, seed) on "
                f"this QM9 instance before evaluating {task!r}"
            )
        return mean_absolute_error(predictions, targets) * self.statistics[task][1]
