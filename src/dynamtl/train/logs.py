"""A run's logs: ``steps.jsonl``, ``epochs.jsonl`` and ``events.jsonl`` (formats in
``docs/cli.md``), mirrored to TensorBoard when the ``tensorboard`` package is installed.

Resuming truncates the step and epoch logs to their sizes at the checkpoint, so that the
logs of a resumed run hold each step once; ``events.jsonl`` keeps the whole history.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from dynamtl.train.folder import RunFolder

logger = logging.getLogger("dynamtl")
_told_about_tensorboard = False


def _tensorboard_writer(folder: Path, purge_step: int | None) -> Any:
    """A ``SummaryWriter``, or ``None`` (saying once how to get one) without tensorboard."""
    global _told_about_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _told_about_tensorboard:
            logger.warning("TensorBoard logs are off: `pip install tensorboard` to write them (the JSONL logs are kept)")
            _told_about_tensorboard = True
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


class RunLog:
    """The logs of one run.

    Args:
        folder: the run folder, or ``None`` for a log that writes nothing (the processes
            other than rank 0 of a distributed run).
        sizes: byte sizes to truncate ``steps.jsonl`` and ``epochs.jsonl`` to (resume), or
            ``None`` to start them empty.
        step: the number of steps already taken (TensorBoard drops its events after it).
    """

    def __init__(self, folder: RunFolder | None, sizes: Mapping[str, int] | None = None, step: int = 0) -> None:
        self._open = contextlib.ExitStack()
        self._files: dict[str, IO[str]] = {}
        self.tensorboard: Any = None
        if folder is None:
            return
        folder.root.mkdir(parents=True, exist_ok=True)
        for name, path in (("steps", folder.steps), ("epochs", folder.epochs), ("events", folder.events)):
            self._files[name] = self._open.enter_context(path.open("a"))
            if name != "events":
                self._files[name].truncate(0 if sizes is None else min(sizes[name], path.stat().st_size))
        self.tensorboard = _tensorboard_writer(folder.tensorboard, step if sizes is not None else None)

    def step(self, record: Mapping[str, Any]) -> None:
        self._write("steps", record)
        if self.tensorboard is not None:
            for key, value in record.items():
                if key.startswith(("loss/", "weight/", "aggregation_weight/")) or key == "lr":
                    self.tensorboard.add_scalar(key, value, record["step"])

    def epoch(self, record: Mapping[str, Any]) -> None:
        self._write("epochs", record)
        if self.tensorboard is not None:
            for key, value in record.items():
                if "/" in key or key == "selection":
                    self.tensorboard.add_scalar(f"epoch/{key}", value, record["step"])

    def event(self, name: str, **fields: Any) -> None:
        self._write("events", {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": name, **fields})

    def sizes(self) -> dict[str, int]:
        """The byte sizes of the step and epoch logs, everything written so far flushed."""
        self.flush()
        return {name: self._files[name].tell() for name in ("steps", "epochs")}

    def flush(self) -> None:
        for file in self._files.values():
            file.flush()
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        self.flush()
        self._open.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _write(self, name: str, record: Mapping[str, Any]) -> None:
        file = self._files.get(name)
        if file is not None:
            file.write(json.dumps(record) + "\n")
            file.flush()
