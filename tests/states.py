"""One check that two nested states (``state_dict``s, optimizer states, snapshots) are equal
bit for bit, shared by the tests of steps that must leave everything as it was."""

from __future__ import annotations

from typing import Any

import torch


def assert_same_state(a: Any, b: Any, path: str = "") -> None:
    """``a`` and ``b`` hold the same keys, lengths and values; tensors equal element for
    element (NaN where the other has NaN), dataclasses compared by their fields."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        same_nans = torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
        assert torch.equal(a, b) or same_nans, path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}/{index}")
    elif hasattr(a, "__dataclass_fields__"):
        assert_same_state(vars(a), vars(b), path)
    else:
        assert a == b or a is b or repr(a) == repr(b), path
