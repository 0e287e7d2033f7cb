"""Checkpoints: written atomically, rotated, verified, read back safely with clear
errors, and checked against the run they resume.

A checkpoint is one ``torch.save`` file holding everything a run needs to continue as if
it had never stopped: the resolved config and the environment (versions, threads), the
position in the data, the model, optimizer, scheduler and :class:`~dynamtl.MultiTask`
states (λ, its optimizer, DWA's history…), the random states, the model-selection state
and the sizes of the logs at that moment. ``checkpoints/last.pt`` is the newest; before it
is replaced, the one it replaces becomes ``checkpoints/previous.pt``. Both changes are
atomic, so a run killed at any instant leaves a complete ``last.pt``.

Safety: a checkpoint holds tensors and plain containers (dicts, lists, tuples, numbers,
strings) only, and is read with ``torch.load(weights_only=True)``: a file holding any other
object (a pickle that would run code when loaded) is refused, never executed.

Integrity: the SHA-256 of every checkpoint is recorded in ``checkpoints/checksums.json``
before the file takes its name (the last :data:`KEPT_CHECKSUMS` of them, so that a run
killed between the two writes leaves only recorded files), and checked on load: a file
changed or damaged since it was written is refused, named, left as it is, and the
previous checkpoint is offered.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamtl.train.folder import (
    RunFolder,
    remove_quietly,
    replace_durably,
    sync_folder,
    write_durably,
    write_error,
)

FORMAT = 2
REQUIRED = ("format", "config", "position", "model", "optimizer", "scheduler", "multitask", "rng")
IGNORED_FOR_COMPATIBILITY = ("root",)
"""Config fields that may differ between a checkpoint and the run resuming it (the data
folder may move; the data it holds must not)."""
CHECKSUMS = "checksums.json"
KEPT_CHECKSUMS = 4


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed: damaged, unsafe, or made by a different run."""


def save(folder: RunFolder, state: Mapping[str, Any]) -> None:
    """Write ``state`` as the new ``last.pt``, keeping the current one as ``previous.pt``,
    its checksum recorded first. ``FolderWriteError`` (disk full, read-only folder) leaves
    the current checkpoints as they are and no staged file behind."""
    last, previous = folder.checkpoint("last"), folder.checkpoint("previous")
    data = serialized({"format": FORMAT, **state})
    staged = last.with_name(".last.pt.staged")
    try:
        last.parent.mkdir(parents=True, exist_ok=True)
        _record_checksum(last.parent, hashlib.sha256(data).hexdigest())
        write_durably(staged, data)
        if last.exists():
            link = previous.with_name(".previous.pt.link")
            link.unlink(missing_ok=True)
            os.link(last, link)
            os.replace(link, previous)
        os.replace(staged, last)
    except OSError as error:
        remove_quietly(staged)
        raise write_error(last, error, f"the last good checkpoint {last} is kept" if last.exists() else "") from error
    sync_folder(last.parent)


def serialized(value: Any) -> bytes:
    """``torch.save(value)`` as bytes (written to disk afterwards, so that a full disk
    raises a plain ``OSError``)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _recorded_checksums(checkpoints: Path) -> list[str]:
    path = checkpoints / CHECKSUMS
    try:
        recorded = json.loads(path.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [digest for digest in recorded if isinstance(digest, str)] if isinstance(recorded, list) else []


def _record_checksum(checkpoints: Path, digest: str) -> None:
    kept = [d for d in _recorded_checksums(checkpoints) if d != digest][-(KEPT_CHECKSUMS - 1):]
    replace_durably(checkpoints / CHECKSUMS, (json.dumps({"sha256": [*kept, digest]}, indent=2) + "\n").encode())


def load(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, verified against its recorded checksum and read with
    ``weights_only=True``; ``CheckpointError`` when it is missing, damaged, changed since
    it was written, holds objects other than tensors and plain containers, or lacks parts."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: the run has not saved one yet (it saves at every epoch's end)")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(_damaged(path, f"it cannot be read ({error.strerror})")) from error
    recorded = _recorded_checksums(path.parent)
    if not recorded:
        raise CheckpointError(_damaged(path, f"its checksum file {path.parent / CHECKSUMS} is missing or damaged, so "
                                             "it cannot be verified"))
    if hashlib.sha256(data).hexdigest() not in recorded:
        raise CheckpointError(_damaged(path, f"its SHA-256 matches none recorded in {path.parent / CHECKSUMS} when "
                                             "checkpoints were written: it was changed or damaged since"))
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise CheckpointError(_damaged(path, f"it cannot be read ({error})")) from error
        found = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "unknown objects")
        found = found.removeprefix("WeightsUnpickler error: ").split(" was not an allowed")[0]
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors and plain containers ({found}), "
            "which dynamtl never writes; loading it could run code. It was left as it is: do not resume from it "
            "unless you know where it came from"
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(_damaged(path, f"it cannot be read ({error})")) from error
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED):
        raise CheckpointError(_damaged(path, "it lacks parts of a dynamtl checkpoint"))
    if state["format"] != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']}, this dynamtl reads format {FORMAT}: "
            "resume it with the dynamtl version that wrote it"
        )
    return state


def verified(path: Path) -> bool:
    """Whether ``path`` exists and matches a recorded checksum (without reading it as a
    checkpoint)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() in _recorded_checksums(path.parent)
    except OSError:
        return False


def _damaged(path: Path, why: str) -> str:
    message = f"the checkpoint {path} is damaged: {why}. It was left as it is."
    previous = path.with_name("previous.pt")
    if path.name == "last.pt" and previous.is_file():
        message += (f" The checkpoint before it is kept: resume from it with "
                    f"`dynamtl resume {path.parent.parent} --checkpoint previous`.")
    return message


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"field: … before, … now"`` for every config field (but the data ``root``) in
    which ``saved`` and ``current`` differ; fields that are tables (``options``,
    ``environment``) are compared entry by entry (``options.epsilon: …``)."""
    flat_saved, flat_current = _flat(saved), _flat(current)
    keys = sorted((set(flat_saved) | set(flat_current)) - set(IGNORED_FOR_COMPATIBILITY))
    missing = "(absent)"
    return [f"{k}: {flat_saved.get(k, missing)!r} before, {flat_current.get(k, missing)!r} now"
            for k in keys if flat_saved.get(k, missing) != flat_current.get(k, missing)]


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def rng_state() -> dict[str, Any]:
    """The random states of torch (CPU and every CUDA device), NumPy and Python."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }


def _numpy_state() -> tuple[Any, ...]:
    """NumPy's global random state with its key as a tensor (``weights_only`` loads no
    NumPy arrays)."""
    # NumPy's legacy global state (NPY002 waived below) is what a checkpoint saves and restores
    kind, key, position, has_gauss, gauss = np.random.get_state(legacy=True)  # noqa: NPY002
    assert isinstance(key, np.ndarray)
    return kind, torch.from_numpy(key.astype(np.int64)), position, has_gauss, gauss


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back the random states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, key, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), position, has_gauss, gauss))  # noqa: NPY002
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - code that draws from the global state
    random.seed(seed)
