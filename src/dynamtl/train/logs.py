"""A run's logs: ``steps.jsonl``, ``epochs.jsonl`` and ``events.jsonl`` (formats in
``docs/cli.md``), mirrored to TensorBoard when the ``tensorboard`` package is installed.

Resuming truncates the step and epoch logs to their sizes at the checkpoint, so that the
logs of a resumed run hold each step once; ``events.jsonl`` keeps the whole history. A log
found missing, cut or garbled on resume is rebuilt from its intact records up to the
checkpoint and the loss is reported (what is gone cannot be recreated): see
:attr:`RunLog.repairs`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from dynamtl.report.records import parse_records
from dynamtl.train.folder import RunFolder, write_atomic, write_error

WRITER_CLOSE_SECONDS = 5.0
"""How long closing the TensorBoard writer may take before the run goes on without it."""

logger = logging.getLogger("dynamtl")
_told_about_tensorboard = False


def _tensorboard_writer(folder: Path, purge_step: int | None) -> Any:
    """A ``SummaryWriter``, or ``None`` (saying once how to get one) without tensorboard."""
    global _told_about_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _told_about_tensorboard:
            logger.warning(
                "TensorBoard logs are off: `pip install tensorboard` to write them (the JSONL logs are kept)"
            )
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

    def __init__(
        self, folder: RunFolder | None, sizes: Mapping[str, int] | None = None, step: int = 0, epoch: int = 0
    ) -> None:
        self._open = contextlib.ExitStack()
        self._files: dict[str, IO[str]] = {}
        self.tensorboard: Any = None
        self.repairs: list[str] = []
        """What was wrong with the logs on resume (one sentence per log), empty if nothing."""
        if folder is None:
            return
        folder.root.mkdir(parents=True, exist_ok=True)
        counted = {"steps": ("step", step), "epochs": ("epoch", epoch)}
        for name, path in (("steps", folder.steps), ("epochs", folder.epochs), ("events", folder.events)):
            if name != "events":
                if sizes is None:
                    write_atomic(path, b"")
                else:
                    self._restore(path, sizes[name], *counted[name])
            try:
                self._files[name] = self._open.enter_context(path.open("a"))
            except OSError as error:
                raise write_error(path, error) from error
        self.tensorboard = _tensorboard_writer(folder.tensorboard, step if sizes is not None else None)

    def _restore(self, path: Path, size: int, key: str, count: int) -> None:
        """Make ``path`` hold its records up to the checkpoint (its first ``size`` bytes,
        records ``key`` = 1…``count``), dropping damaged lines; say what is missing."""
        data = path.read_bytes()[:size] if path.is_file() else b""
        parsed = parse_records(data)
        kept = [r for r in parsed.records if isinstance(r.get(key), int) and 1 <= r[key] <= count]
        missing = sorted(set(range(1, count + 1)) - {r[key] for r in kept})
        problems = []
        if not path.is_file() and count:
            problems.append("is missing")
        if parsed.bad_lines or parsed.partial_line:
            problems.append(f"had {len(parsed.bad_lines) + bool(parsed.partial_line)} damaged line(s), dropped")
        if missing and path.is_file():
            problems.append(f"lacked {len(missing)} record(s)")
        if problems:
            self.repairs.append(
                f"{path} {' and '.join(problems)}: rebuilt with its {len(kept)} intact record(s) up to the checkpoint "
                f"({key} {count})" + (f"; the records of {key}s {_ranges(missing)} are lost" if missing else "")
            )
        rebuilt = "".join(json.dumps(record) + "\n" for record in kept).encode()
        if not path.is_file() or path.read_bytes() != rebuilt:
            write_atomic(path, rebuilt)

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
        """Close the logs; the TensorBoard writer is given :data:`WRITER_CLOSE_SECONDS`
        (its thread can stall), after which the run ends without waiting for it."""
        with contextlib.suppress(OSError):
            self.flush()
        self._open.close()
        if self.tensorboard is not None:
            closing = threading.Thread(target=self.tensorboard.close, daemon=True, name="dynamtl-tensorboard-close")
            closing.start()
            closing.join(WRITER_CLOSE_SECONDS)
            if closing.is_alive():
                logger.warning("the TensorBoard writer did not close within %g s; its last events may be missing "
                               "(the JSONL logs are complete)", WRITER_CLOSE_SECONDS)

    def _write(self, name: str, record: Mapping[str, Any]) -> None:
        file = self._files.get(name)
        if file is not None:
            try:
                file.write(json.dumps(record) + "\n")
                file.flush()
            except OSError as error:
                raise write_error(Path(file.name), error) from error


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1–3, 7"`` (sorted input)."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in spans)
