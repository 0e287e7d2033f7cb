"""Progress bars of data preparation: what the first run on an empty data folder shows
while it fills the folder and builds its caches (every later run reads them back).

Every loader that prepares data shows its steps through :func:`progress` (an iterable)
or :func:`bar` (work counted by hand), never through a bar of its own. The conventions
are those of the training bars: ``tqdm`` on standard error, shown only when standard
error is a terminal (tqdm's ``disable=None``), and not at all inside :func:`shown`
``(False)``, which a run enters for ``--quiet``, for ranks other than 0 under torchrun and
in a comparison's worker processes. Without tqdm (it comes with the ``cli`` extra) the
work is done without bars.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

_SHOWN: contextvars.ContextVar[bool] = contextvars.ContextVar("dynamtl_data_progress", default=True)


class Counter(Protocol):
    """What :func:`bar` yields: ``update(n)`` counts ``n`` more units done."""

    def update(self, n: float = 1) -> Any: ...


class _Silent:
    def update(self, n: float = 1) -> None:
        return None


@contextlib.contextmanager
def shown(show: bool) -> Iterator[None]:
    """Data-preparation bars in this block: ``True``, on a terminal (the default outside
    any block); ``False``, never."""
    token = _SHOWN.set(show)
    try:
        yield
    finally:
        _SHOWN.reset(token)


@contextlib.contextmanager
def bar(description: str, total: float | None, unit: str = "it") -> Iterator[Counter]:
    """A bar labelled ``description`` counting ``total`` units of ``unit`` (``None``: an
    unknown total), removed when the block ends (the ``preparing FILE`` log line of
    :func:`~dynamtl.data._files.load_or_build` stays)."""
    if importlib.util.find_spec("tqdm") is None:
        yield _Silent()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True,
              file=sys.stderr, disable=None if _SHOWN.get() else True) as counter:
        yield counter


def progress(items: Iterable[T], total: int, description: str, unit: str = "it") -> Iterator[T]:
    """``items`` under a :func:`bar` of ``total`` steps."""
    with bar(description, total, unit) as counter:
        for item in items:
            yield item
            counter.update(1)


def slices(count: int, size: int, description: str, unit: str = "it") -> Iterator[slice]:
    """``slice``\\ s of ``size`` covering ``range(count)``, under a :func:`bar` counting the
    ``count`` items (vectorised work done a block at a time)."""
    with bar(description, count, unit) as counter:
        for start in range(0, count, size):
            stop = min(start + size, count)
            yield slice(start, stop)
            counter.update(stop - start)
