"""A run's logs: ``steps.jsonl``, ``epochs.jsonl`` and ``events.jsonl`` (formats in
``docs/cli.md``), mirrored to TensorBoard when the ``tensorboard`` package is installed.

On resume every log is read whole and rebuilt by parsing (never cut at a byte offset):
``steps.jsonl`` and ``epochs.jsonl`` keep the first intact record of each step (epoch)
1…N of the checkpoint, in step order, so that the logs of a resumed run hold each step
once; ``events.jsonl`` keeps all its intact records (the run's history). A line that is
not a well-typed record (:func:`~dynamtl.report.records.record_problem`: a field the log
always writes missing, a value of the wrong type) is dropped; a
log found missing, with such lines, duplicates, records out of order or records missing
is reported (what is gone cannot be recreated): see :attr:`RunLog.repairs`. A last line
cut off after the checkpoint's records (a run killed while writing it) is normal and
dropped silently. The rebuilt log ends with a newline, so what the run writes next
starts on a fresh line.

TensorBoard is a mirror: when its folder cannot be made or its writer fails (disk full,
a file in the way), a one-line warning turns it off and the run goes on with the JSONL
logs, which stay complete.
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

from dynamtl.report.records import REQUIRED, parse_records
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
    if threading.excepthook is not _quiet_writer_threads:
        _quiet_writer_threads.previous = threading.excepthook  # type: ignore[attr-defined]
        threading.excepthook = _quiet_writer_threads
    try:
        return SummaryWriter(str(folder), purge_step=purge_step)
    except OSError as error:
        _tensorboard_off(folder, error)
        return None


def _quiet_writer_threads(args: Any) -> None:
    """``threading.excepthook`` that leaves out the traceback of a TensorBoard writer
    thread failing to write (the writer raises the error again in the run's thread, where
    :meth:`RunLog._mirror` says it in one line); other threads' errors as before."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    _quiet_writer_threads.previous(args)  # type: ignore[attr-defined]


def _tensorboard_off(folder: Path, error: OSError) -> None:
    """Say in one line that TensorBoard logging stops because of ``error``."""
    logger.warning("TensorBoard logs are off: %s (the JSONL logs are kept)",
                   write_error(Path(error.filename) if error.filename else folder, error))


class RunLog:
    """The logs of one run.

    Args:
        folder: the run folder, or ``None`` for a log that writes nothing (the processes
            other than rank 0 of a distributed run).
        resumed: whether the run continues from a checkpoint (its logs are rebuilt, see the
            module docstring) or starts (the step and epoch logs start empty).
        step: the number of steps of the checkpoint (TensorBoard drops its events after it).
        epoch: the number of epochs of the checkpoint.
    """

    def __init__(
        self, folder: RunFolder | None, resumed: bool = False, step: int = 0, epoch: int = 0
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
            if resumed:
                self._restore(path, *counted.get(name, ("", 0)))
            elif name != "events":
                write_atomic(path, b"")
            try:
                self._files[name] = self._open.enter_context(path.open("a"))
            except OSError as error:
                raise write_error(path, error) from error
        self.tensorboard = _tensorboard_writer(folder.tensorboard, step if resumed else None)

    def _restore(self, path: Path, key: str, count: int) -> None:
        """Rebuild ``path`` from its intact records: those of ``key`` = 1…``count`` (the
        first of each, in order), or every one when ``key`` is empty (``events.jsonl``);
        say what was wrong in :attr:`repairs`."""
        data = path.read_bytes() if path.is_file() else b""
        parsed = parse_records(data, REQUIRED.get(path.name, ()))
        problems = []
        if not path.is_file() and (count or not key):
            problems.append("is missing")
        first: dict[int, dict[str, Any]] = {}
        within = []  # the numbers of the records 1…count, as they come
        for record in parsed.records if key else ():
            if 1 <= record.get(key, 0) <= count:
                within.append(record[key])
                first.setdefault(record[key], record)
        kept = [first[n] for n in sorted(first)] if key else parsed.records
        missing = [n for n in range(1, count + 1) if n not in first]
        cut_while_writing = bool(key) and parsed.partial_line is not None and not missing  # killed after the checkpoint
        damaged = len(parsed.bad_lines) + (parsed.partial_line is not None and not cut_while_writing)
        if damaged:
            problems.append(f"had {damaged} damaged line(s), dropped")
        if len(within) > len(first):
            problems.append(f"held {len(within) - len(first)} duplicate record(s), dropped")
        if within != sorted(within):
            problems.append(f"had records out of {key} order, put in order")
        if missing and path.is_file():
            problems.append(f"lacked {len(missing)} record(s)")
        if problems:
            kept_what = f"up to the checkpoint ({key} {count})" if key else "(the run's history)"
            self.repairs.append(
                f"{path} {' and '.join(problems)}: rebuilt with its {len(kept)} intact record(s) {kept_what}"
                + (f"; the records of {key}s {_ranges(missing)} are lost" if missing else "")
                + ("; the events before this resume are lost" if not key and not path.is_file() else "")
            )
        rebuilt = "".join(json.dumps(record) + "\n" for record in kept).encode()
        if data != rebuilt or not path.is_file():
            write_atomic(path, rebuilt)

    def step(self, record: Mapping[str, Any]) -> None:
        self._write("steps", record)
        self._mirror({key: value for key, value in record.items()
                      if key.startswith(("loss/", "weight/", "aggregation_weight/")) or key == "lr"}, record["step"])

    def epoch(self, record: Mapping[str, Any]) -> None:
        self._write("epochs", record)
        self._mirror({f"epoch/{key}": value for key, value in record.items() if "/" in key or key == "selection"},
                     record["step"])

    def event(self, name: str, **fields: Any) -> None:
        self._write("events", {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": name, **fields})

    def flush(self) -> None:
        for file in self._files.values():
            file.flush()
        self._mirror({}, 0)

    def close(self, *, wait: bool = True) -> None:
        """Close the logs; the TensorBoard writer is given :data:`WRITER_CLOSE_SECONDS`
        (its thread can stall), or no time at all without ``wait`` (a second Ctrl-C),
        after which the run ends without waiting for it."""
        with contextlib.suppress(OSError):  # a write that failed is told by its own error
            self.flush()
        with contextlib.suppress(OSError):
            self._open.close()
        writer, self.tensorboard = self.tensorboard, None
        if writer is not None:
            closing = threading.Thread(target=_close_quietly, args=(writer,), daemon=True,
                                       name="dynamtl-tensorboard-close")
            closing.start()
            closing.join(WRITER_CLOSE_SECONDS if wait else 0.0)
            if closing.is_alive() and wait:
                logger.warning("the TensorBoard writer did not close within %g s; its last events may be missing "
                               "(the JSONL logs are complete)", WRITER_CLOSE_SECONDS)

    def _mirror(self, scalars: Mapping[str, Any], step: int) -> None:
        """Add ``scalars`` to TensorBoard and flush it; turn it off, saying why in one
        line, when it cannot write (see the module docstring)."""
        if self.tensorboard is None:
            return
        try:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)
            if not scalars:
                self.tensorboard.flush()
        except OSError as error:
            writer, self.tensorboard = self.tensorboard, None
            _tensorboard_off(Path(writer.log_dir), error)
            threading.Thread(target=_close_quietly, args=(writer,), daemon=True).start()

    def _write(self, name: str, record: Mapping[str, Any]) -> None:
        file = self._files.get(name)
        if file is not None:
            try:
                file.write(json.dumps(record) + "\n")
                file.flush()
            except OSError as error:
                raise write_error(Path(file.name), error) from error


def _close_quietly(writer: Any) -> None:
    """Close a TensorBoard writer; a failure to write its last events is already told (or
    is told by the JSONL logs' own error)."""
    with contextlib.suppress(OSError):
        writer.close()


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1–3, 7"`` (sorted input)."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in spans)
