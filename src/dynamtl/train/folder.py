"""The layout of a run folder (documented in ``docs/cli.md``, "Run folder") and atomic
writes of its files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

RESULTS_FORMAT = 1


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked: it holds no run, another run, or a
    finished one."""


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

    def read_json(self, path: Path) -> dict[str, Any]:
        """A JSON file of the folder; ``RunFolderError`` saying what the folder lacks."""
        if not path.is_file():
            raise RunFolderError(f"{path} is missing: {self.root} is not a dynamtl run folder (made by `dynamtl train`)")
        return json.loads(path.read_text())


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` so that a reader (or a run killed at any
    moment) sees the old content or the new one, never a part: temporary file, fsync,
    ``os.replace``, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    sync_folder(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    text = json.dumps(data, indent=2) + "\n"
    write_atomic(path, lambda file: file.write(text.encode()))


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
