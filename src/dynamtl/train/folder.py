"""The layout of a run folder (documented in ``docs/cli.md``, "Run folder"), atomic
writes of its files, and the lock that lets one process at a time write it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from filelock import FileLock, Timeout
except ModuleNotFoundError as missing:  # pragma: no cover - depends on the installed extras
    raise ModuleNotFoundError("dynamtl.train needs filelock: pip install 'dynamtl[cli]'") from missing

from dynamtl.command import typed
from dynamtl.report.records import Check, DamagedFile, read_table, results_problems

RESULTS_FORMAT = 1
GATE_SECONDS = 30.0
"""How long a process waits for ``.lock.gate`` (see :func:`locked`)."""


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked: it holds no run, another run, or a
    finished one, a damaged file, or another process is writing it."""


class FolderWriteError(RunFolderError):
    """A file of a run folder could not be written (disk full, read-only folder…): the
    staged temporary file was removed and the file's previous version kept. ``remedy``:
    what frees the way (``"make room"``…), ``""`` once the message says it."""

    def __init__(self, message: str, remedy: str = "") -> None:
        super().__init__(message)
        self.remedy = remedy


@dataclass(frozen=True)
class RunFolder:
    """The files of one run, below ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def steps(self) -> Path:
        return self.root / "steps.jsonl"

    @property
    def epochs(self) -> Path:
        return self.root / "epochs.jsonl"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def checkpoint(self, which: str) -> Path:
        """``checkpoints/<which>.pt`` (``"last"`` or ``"previous"``)."""
        return self.checkpoints / f"{which}.pt"

    def task_run(self, task: str) -> RunFolder:
        """The run folder of a single-task baseline's ``task``."""
        return RunFolder(self.root / "tasks" / task)

    @property
    def finished(self) -> bool:
        return self.results.is_file()

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def holder_file(self) -> Path:
        return self.root / ".lock.holder"

    def read_json(self, path: Path, *, repair: str = "", check: Check | None = None) -> dict[str, Any]:
        """A JSON file of the folder (:func:`~dynamtl.report.records.read_table`, its
        fields checked by ``check``); ``RunFolderError`` saying what the folder lacks, or
        which file is damaged, how, and what to do (``repair``: how to get it back, when
        there is a way)."""
        try:
            return read_table(path, check)
        except FileNotFoundError:
            raise RunFolderError(
                f"{path} is missing: {self.root} is not a dynamtl run folder (made by `dynamtl train`)"
            ) from None
        except DamagedFile as error:
            raise RunFolderError(
                f"{error}: {repair or 'restore it from a backup, or delete the run folder and train anew'}"
            ) from error

    def read_results(self) -> dict[str, Any]:
        """``results.json``, every field checked
        (:func:`~dynamtl.report.records.results_problems`); ``RunFolderError`` naming the
        file, what is wrong and how the results are made again."""
        last, previous = self.checkpoint("last"), self.checkpoint("previous")
        how = ("rebuilt from its last checkpoint" if last.is_file() or previous.is_file()
               else "gathered again from its per-task runs" if (self.root / "tasks").is_dir()
               else "made again by training it anew")
        return self.read_json(self.results, check=results_problems, repair=(
            f"delete {self.results} and run the same command again: the run's results are then {how}"))


@contextlib.contextmanager
def locked(folder: RunFolder) -> Iterator[None]:
    """Hold the lock of ``folder`` (``.lock``, a :class:`filelock.FileLock`) while the
    block runs, so that one process at a time writes the folder; ``RunFolderError`` naming
    the process that holds it. The operating system releases the lock of a process that
    dies, so a killed run never leaves a stale lock.

    Who holds it is written to ``.lock.holder`` (pid, host, time, the command as typed).
    Taking the lock and writing the holder, and failing to take it and reading the holder,
    each happen under a second, short-held lock (``.lock.gate``): a refused process names
    the current holder, never the one before it."""
    lock = FileLock(str(folder.lock_file), timeout=0)
    gate = FileLock(str(folder.root / ".lock.gate"), timeout=GATE_SECONDS)
    try:
        folder.root.mkdir(parents=True, exist_ok=True)
        with gate:
            try:
                lock.acquire()
            except Timeout:
                raise RunFolderError(
                    f"{folder.root} is in use by another dynamtl process ({_holder(folder)}): wait for it to end, "
                    "or stop it (Ctrl-C, or kill -INT PID: it checkpoints and exits), then try again"
                ) from None
            try:
                write_json_atomic(folder.holder_file, {
                    "pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": typed(),
                })
            except BaseException:
                lock.release()
                raise
    except Timeout:
        raise RunFolderError(f"{folder.root}: could not take {folder.root / '.lock.gate'} within {GATE_SECONDS} s "
                             "(held only for an instant by a process taking the folder's lock): try again") from None
    except OSError as error:
        raise write_error(folder.lock_file, error) from error
    try:
        yield
    finally:
        lock.release()


def _holder(folder: RunFolder) -> str:
    try:
        holder = json.loads(folder.holder_file.read_text())
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its holder is not recorded in {folder.holder_file}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a run killed at any moment) sees the
    old content or the new one, never a part: temporary file, fsync, ``os.replace``,
    fsync of the folder. ``FolderWriteError`` (one line: the folder and the cause) when the
    file system refuses, the temporary file removed and the old ``path`` kept."""
    try:
        replace_durably(path, data)
    except OSError as error:
        raise write_error(path, error, "its previous version is kept" if path.is_file() else "") from error


def replace_durably(path: Path, data: bytes) -> None:
    """:func:`write_atomic` raising the file system's ``OSError`` as it is (the temporary
    file removed)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(temporary, data)
        os.replace(temporary, path)
    except BaseException:  # (a second Ctrl-C too): no temporary file left behind
        remove_quietly(temporary)
        raise
    sync_folder(path.parent)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (``OSError`` as the file system raises it)."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def write_error(path: Path, error: OSError, kept: str = "") -> FolderWriteError:
    """The one-line error for ``path`` not written because of ``error`` (``kept``: what
    was kept instead), with the remedy of its cause."""
    number = error.errno or 0
    cause, remedy = _CAUSES.get(number, (error.strerror or str(error), ""))
    if number in (errno.EEXIST, errno.ENOTDIR) and error.filename:
        path = Path(error.filename)  # the file in the way
        remedy = f"move {path} out of the way"
    elif number == errno.EISDIR and (error.filename2 or error.filename):
        path = Path(error.filename2 or error.filename)  # the folder in the way (a rename's target)
        remedy = f"move {path} out of the way"
    return FolderWriteError(f"cannot write {path.name} in {path.parent}: {cause}" + (f"; {kept}" if kept else ""),
                            remedy)


_CAUSES = {
    errno.ENOSPC: ("the disk is full", "make room"),
    errno.EDQUOT: ("the disk quota is exceeded", "make room"),
    errno.EFBIG: ("the file-size limit is reached (ulimit -f)", "raise the file-size limit (ulimit -f unlimited)"),
    errno.EROFS: ("the file system is read-only", "make it writable"),
    errno.EACCES: ("permission denied", "make the folder writable"),
    errno.EPERM: ("permission denied", "make the folder writable"),
    errno.EEXIST: ("a file is in the way of a folder", "move the file out of the way"),
    errno.ENOTDIR: ("a file is in the way of a folder", "move the file out of the way"),
    errno.EISDIR: ("a folder is in the way of the file", "move the folder out of the way"),
}
"""errno -> (the cause in words, the remedy)."""


def remove_quietly(path: Path) -> None:
    """Remove ``path`` if it exists (a staged file after a failed write)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
