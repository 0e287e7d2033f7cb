"""Checkpoints: written atomically, rotated, read back with clear errors, and checked
against the run they resume.

A checkpoint is one ``torch.save`` file holding everything a run needs to continue as if
it had never stopped: the resolved config, the position in the data, the model, optimizer,
scheduler and :class:`~dynamtl.MultiTask` states (λ, its optimizer, DWA's history…), the
random states, the model-selection state and the sizes of the logs at that moment.
``checkpoints/last.pt`` is the newest; before it is replaced, the one it replaces becomes
``checkpoints/previous.pt``. Both changes are atomic, so a run killed at any instant
leaves a complete ``last.pt``.

Checkpoints are pickles: load only those you made (``torch.load(weights_only=False)``).
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamtl.train.folder import RunFolder, sync_folder, write_atomic

FORMAT = 1
REQUIRED = ("format", "config", "position", "model", "optimizer", "scheduler", "multitask", "rng")
IGNORED_FOR_COMPATIBILITY = ("root",)
"""Config fields that may differ between a checkpoint and the run resuming it (the data
folder may move; the data it holds must not)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed: damaged, or made by a different run."""


def save(folder: RunFolder, state: Mapping[str, Any]) -> None:
    """Write ``state`` as the new ``last.pt``, keeping the current one as ``previous.pt``."""
    last, previous = folder.checkpoint("last"), folder.checkpoint("previous")
    staged = last.with_name(".last.pt.staged")
    write_atomic(staged, lambda file: torch.save({"format": FORMAT, **state}, file))
    if last.exists():
        link = previous.with_name(".previous.pt.link")
        link.unlink(missing_ok=True)
        os.link(last, link)
        os.replace(link, previous)
    os.replace(staged, last)
    sync_folder(last.parent)


def load(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``; ``CheckpointError`` when it is missing or damaged."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: the run has not saved one yet (it saves at every epoch's end)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(_damaged(path, f"it cannot be read ({error})")) from error
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED):
        raise CheckpointError(_damaged(path, "it lacks parts of a dynamtl checkpoint"))
    if state["format"] != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']}, this dynamtl reads format {FORMAT}: "
            "resume it with the dynamtl version that wrote it"
        )
    return state


def _damaged(path: Path, why: str) -> str:
    message = f"the checkpoint {path} is damaged: {why}. It was left as it is."
    previous = path.with_name("previous.pt")
    if path.name == "last.pt" and previous.is_file():
        message += f" The checkpoint before it is kept: resume from it with `dynamtl resume {path.parent.parent} --checkpoint previous`."
    return message


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"field: saved …, current …"`` for every config field (but the data ``root``) in
    which ``saved`` and ``current`` differ."""
    keys = sorted((set(saved) | set(current)) - set(IGNORED_FOR_COMPATIBILITY))
    return [f"{k}: {saved.get(k)!r} before, {current.get(k)!r} now" for k in keys if saved.get(k) != current.get(k)]


def rng_state() -> dict[str, Any]:
    """The random states of torch (CPU and every CUDA device), NumPy and Python."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back the random states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
