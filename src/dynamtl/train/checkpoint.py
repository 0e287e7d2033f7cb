"""Checkpoints: written atomically, rotated, verified, read back safely with clear
errors, and checked against the run they resume.

A checkpoint is one ``torch.save`` file holding everything a run needs to continue as if
it had never stopped: the resolved config and the environment (versions, threads), the
position in the data, the model, optimizer, scheduler and :class:`~dynamtl.MultiTask`
states (λ, its optimizer, DWA's history…), the random states and the model-selection
state (the logs are rebuilt to its step on resume: :mod:`dynamtl.train.logs`).
``checkpoints/last.pt`` is the newest; before it is replaced, the one it replaces becomes
``checkpoints/previous.pt``. Both changes are atomic, so a run killed at any instant leaves a complete ``last.pt``.

Safety: a checkpoint holds tensors and plain containers (dicts, lists, tuples, numbers,
strings) only, and is read with ``torch.load(weights_only=True)``: a file holding any other
object (a pickle that would run code when loaded) is refused, never executed.

Integrity: the SHA-256 of every checkpoint is recorded in ``checkpoints/checksums.json``
before the file takes its name (the last :data:`KEPT_CHECKSUMS` of them, so that a run
killed between the two writes leaves only recorded files), and checked on load: a file
changed or damaged since it was written is refused, named, left as it is, and the
previous checkpoint is offered. A checksum record that is missing or damaged is named as
such: it is no verdict on the checkpoint, which is then refused as *unverifiable* (never
renamed) until the user trusts it (``dynamtl resume RUN --trust-checkpoint``: read with
``weights_only`` all the same, and its checksum recorded anew).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamtl.command import suggested
from dynamtl.train.folder import (
    RunFolder,
    remove_quietly,
    replace_durably,
    sync_folder,
    write_durably,
    write_error,
)

FORMAT = 2
IGNORED_FOR_COMPATIBILITY = ("root",)
"""Config fields that may differ between a checkpoint and the run resuming it (the data
folder may move; the data it holds must not)."""
CHECKSUMS = "checksums.json"
NOT_A_FILE = "is not a file (a folder or another non-file is in its place)"
KEPT_CHECKSUMS = 4


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed: damaged, unsafe, or made by a different run."""


def _table(*entries: str, **kinds: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A dict holding ``entries`` (any value) and ``kinds`` (values that pass their check)."""
    return lambda value: (isinstance(value, dict) and all(e in value for e in (*entries, *kinds))
                          and all(check(value[key]) for key, check in kinds.items()))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _sequence(length: int | None = None) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, (list, tuple)) and (length is None or len(value) == length)


PARTS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "format": ("a whole number", _whole),
    "config": ("a table", _table()),
    "environment": ("a table", _table()),
    "processes": ("a whole number", _whole),
    "position": ("a table of whole numbers epoch, batch, step", _table(epoch=_whole, batch=_whole, step=_whole)),
    "model": ("a table of tensors", lambda v: isinstance(v, dict) and all(map(_tensor, v.values()))),
    "optimizer": ("a table with state and param_groups", _table(state=_table(), param_groups=_sequence())),
    "scheduler": ("a table", _table()),
    "multitask": ("a table", _table()),
    "scaler": ("a table or None", lambda v: v is None or isinstance(v, dict)),
    "rng": ("a table of the torch, cuda, numpy and python random states",
            _table(torch=_tensor, cuda=_sequence(), numpy=_sequence(5), python=_sequence())),
    "meta_stream": ("a whole number", _whole),
    "extra_stream": ("a whole number", _whole),
    "totals": ("a table with sums, count, skipped, seconds",
               _table(sums=_tensor, count=_whole, skipped=_whole, seconds=_number)),
    "selection": ("a table with reference, best_epoch, best_score, best_model, best_metrics",
                  _table("reference", "best_epoch", "best_score", "best_model", "best_metrics")),
    "skipped": ("a whole number", _whole),
    "last_weights": ("a tensor", _tensor),
    "seconds": ("a table of numbers", lambda v: isinstance(v, dict) and all(map(_number, v.values()))),
}
"""Every part of a checkpoint: what it must be, and the check."""
OPTIONAL = ("extra_stream",)
"""Parts a format-2 checkpoint may lack (written before they existed; their default is used)."""


def structure_problems(state: Any) -> list[str]:
    """What makes ``state`` (a loaded checkpoint) not a complete dynamtl checkpoint: each
    missing part, each part of the wrong type or shape, each part dynamtl does not write;
    ``[]`` when it is one."""
    if not isinstance(state, dict):
        return [f"it holds a {type(state).__name__}, not a table of parts"]
    missing = [part for part in PARTS if part not in state and part not in OPTIONAL]
    problems = [f"it lacks the part(s) {', '.join(map(repr, missing))}"] if missing else []
    problems += [f"its part {part!r} is not {what}" for part, (what, check) in PARTS.items()
                 if part in state and not check(state[part])]
    unknown = [str(part) for part in state if part not in PARTS]
    if unknown:
        problems.append(f"it holds part(s) no dynamtl checkpoint has: {', '.join(map(repr, unknown))}")
    return problems


def save(folder: RunFolder, state: Mapping[str, Any]) -> None:
    """Write ``state`` as the new ``last.pt``, keeping the current one as ``previous.pt``,
    its checksum recorded first. ``FolderWriteError`` (disk full, read-only folder) leaves
    the current checkpoints as they are and no staged file behind."""
    last, previous = folder.checkpoint("last"), folder.checkpoint("previous")
    data = serialized({"format": FORMAT, **state})
    staged, link = last.with_name(".last.pt.staged"), previous.with_name(".previous.pt.link")
    try:
        last.parent.mkdir(parents=True, exist_ok=True)
        _record_checksum(last.parent, hashlib.sha256(data).hexdigest())
        write_durably(staged, data)
        if last.exists():
            link.unlink(missing_ok=True)
            os.link(last, link)
            os.replace(link, previous)
        os.replace(staged, last)
    except BaseException as error:  # (a second Ctrl-C too): no staged file or link left behind
        remove_quietly(staged)
        remove_quietly(link)
        if isinstance(error, OSError):
            raise write_error(last, error, f"the last good checkpoint {last} is kept" if last.exists() else "") \
                from error
        raise
    sync_folder(last.parent)


def serialized(value: Any) -> bytes:
    """``torch.save(value)`` as bytes (written to disk afterwards, so that a full disk
    raises a plain ``OSError``)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def recorded_checksums(checkpoints: Path) -> tuple[list[str], str]:
    """The SHA-256 digests recorded in ``checkpoints/checksums.json``, and ``""`` or what
    is wrong with that record (missing, unreadable, not the JSON dynamtl writes): a record
    that cannot be read says nothing about the checkpoints themselves."""
    path = checkpoints / CHECKSUMS
    if path.exists() and not path.is_file():
        return [], NOT_A_FILE
    if not path.is_file():
        return [], "is missing"
    try:
        recorded = json.loads(path.read_text())
    except OSError as error:
        return [], f"cannot be read ({error.strerror})"
    except (ValueError, UnicodeDecodeError) as error:
        return [], f"is damaged (not valid JSON: {error})"
    digests = recorded.get("sha256") if isinstance(recorded, dict) else None
    if not isinstance(digests, list) or not digests or not all(_is_sha256(d) for d in digests):
        return [], 'is damaged (not a table {"sha256": [SHA-256 digests]})'
    return digests, ""


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _record_checksum(checkpoints: Path, digest: str) -> None:
    kept = [d for d in recorded_checksums(checkpoints)[0] if d != digest][-(KEPT_CHECKSUMS - 1):]
    replace_durably(checkpoints / CHECKSUMS, (json.dumps({"sha256": [*kept, digest]}, indent=2) + "\n").encode())


def record_checksum(path: Path) -> None:
    """Record the SHA-256 of the checkpoint ``path`` in its folder's ``checksums.json``
    (rebuilding a missing or damaged record): after ``--trust-checkpoint``."""
    try:
        _record_checksum(path.parent, hashlib.sha256(path.read_bytes()).hexdigest())
    except OSError as error:
        raise write_error(path.parent / CHECKSUMS, error) from error


def load(path: Path, *, trust: bool = False) -> dict[str, Any]:
    """The checkpoint at ``path``, verified against its recorded checksum and read with
    ``weights_only=True``; ``CheckpointError`` when it is missing, damaged, changed since
    it was written, cannot be verified (its checksum record is missing or damaged: the
    message says so and is no verdict on the checkpoint), holds objects other than tensors
    and plain containers, or lacks parts. ``trust``: read it although its checksum is not
    recorded or does not match (still with ``weights_only``, so no code can run)."""
    if path.exists() and not path.is_file():
        previous = path.with_name("previous.pt")
        way_on = (f"then `{_resume_command(path)}` continues from {previous}" if path.name == "last.pt"
                  and previous.is_file() else "then run the same command again")
        raise CheckpointError(f"the checkpoint {path} is not a file (a folder or another non-file is in its place): "
                              f"move it out of the way, {way_on}")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: the run has not saved one yet (it saves at every epoch's end)")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(damaged(path, f"it cannot be read ({error.strerror})", trust=trust)) from error
    recorded, problem = recorded_checksums(path.parent)
    if problem and not trust:
        raise CheckpointError(_unverifiable(path, problem))
    if not problem and not trust and hashlib.sha256(data).hexdigest() not in recorded:
        raise CheckpointError(damaged(path, f"its SHA-256 matches none recorded in {path.parent / CHECKSUMS} when "
                                             "checkpoints were written: it was changed or damaged since", changed=True))
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise CheckpointError(damaged(path, f"it cannot be read ({error})", trust=trust)) from error
        found = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "unknown objects")
        found = found.removeprefix("WeightsUnpickler error: ").split(" was not an allowed")[0]
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors and plain containers ({found}), "
            "which dynamtl never writes; loading it could run code. It was left as it is: do not resume from it "
            "unless you know where it came from." + _before_it(path, trust)
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(damaged(path, f"it cannot be read ({error})", trust=trust)) from error
    if isinstance(state, dict) and _whole(state.get("format")) and state["format"] != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']}, this dynamtl reads format {FORMAT}: "
            "resume it with the dynamtl version that wrote it"
        )
    problems = structure_problems(state)
    if problems:
        raise CheckpointError(damaged(path, f"it is not a complete dynamtl checkpoint: {'; '.join(problems)}",
                                       readable=False, trust=trust))
    return state


def mismatches(path: Path) -> bool:
    """Whether the checkpoint ``path`` positively fails its checksum: the record is intact
    and the file's SHA-256 is not in it (``False`` when either cannot be read)."""
    recorded, problem = recorded_checksums(path.parent)
    try:
        return not problem and hashlib.sha256(path.read_bytes()).hexdigest() not in recorded
    except OSError:
        return False


def _verified(path: Path) -> bool:
    """Whether the checkpoint ``path`` positively passes its checksum: a file whose SHA-256
    is in an intact record."""
    recorded, problem = recorded_checksums(path.parent)
    try:
        return not problem and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() in recorded
    except OSError:
        return False


def _resume_command(path: Path, *flags: str) -> str:
    which = ("--checkpoint", "previous") if path.name == "previous.pt" else ()
    return suggested("resume", path.parent.parent, *which, *flags)


def _unverifiable(path: Path, problem: str) -> str:
    if problem == NOT_A_FILE:  # --trust-checkpoint could not record the checksum anew there
        return (
            f"cannot verify the checkpoint {path}: its checksum record {path.parent / CHECKSUMS} {problem}. This "
            f"says nothing about the checkpoint itself, which was left as it is. Move {path.parent / CHECKSUMS} out "
            f"of the way (or put the run's checksums.json back), then resume with "
            f"`{_resume_command(path, '--trust-checkpoint')}` if the run folder has not been tampered with (or "
            f"`{_resume_command(path)}` if you put the record back)"
        )
    return (
        f"cannot verify the checkpoint {path}: its checksum record {path.parent / CHECKSUMS} {problem}. This says "
        f"nothing about the checkpoint itself, which was left as it is. If the run folder has not been tampered "
        f"with, resume with `{_resume_command(path, '--trust-checkpoint')}`: the checkpoint is read as weights "
        "only (no code can run), checked for every part of a dynamtl checkpoint, and its checksum recorded anew"
    )


def _before_it(path: Path, trust: bool) -> str:
    """The sentence offering ``previous.pt`` when ``path`` is a refused ``last.pt`` and one is
    kept (with ``--trust-checkpoint`` kept where it was asked for), else ``""``."""
    previous = path.with_name("previous.pt")
    if path.name != "last.pt" or not previous.is_file():
        return ""
    flags = ("--trust-checkpoint",) if trust else ()
    return f" The checkpoint before it is kept: resume from it with `{_resume_command(previous, *flags)}`."


def damaged(path: Path, why: str, *, changed: bool = False, readable: bool = True, trust: bool = False) -> str:
    """The message for the checkpoint ``path`` refused because of ``why``, with the way on:
    the checkpoint before it, or training anew. ``changed``: it fails its checksum (reading
    it on trust is offered); ``readable``: ``--trust-checkpoint`` could read it (not so for
    one whose content is incomplete); ``trust``: it was asked for with ``--trust-checkpoint``
    (which the command for the previous one keeps)."""
    message = f"the checkpoint {path} is damaged: {why}. It was left as it is."
    offer = _before_it(path, trust)
    if offer:
        message += offer
    elif path.name == "previous.pt" and _verified(path.with_name("last.pt")):
        message += (f" The last checkpoint {path.with_name('last.pt')} is intact: resume from it with "
                    f"`{_resume_command(path.with_name('last.pt'))}`.")
    elif path.name == "previous.pt":
        message += (f" No intact checkpoint is left: delete {path.parent.parent} and train it anew with the same "
                    "settings (the same results)"
                    + (", or read a checkpoint as it is with --trust-checkpoint." if readable and not trust else "."))
    else:
        message += f" Delete {path.parent.parent} and train it anew with the same settings (the same results)."
    if changed:
        message += (f" If you changed it on purpose, `{_resume_command(path, '--trust-checkpoint')}` reads it as it is "
                    "(weights only: no code can run).")
    return message


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> tuple[list[str], list[str]]:
    """How the config ``current`` differs from the recorded ``saved``, in every field but
    the data ``root``; fields that are tables (``options``, ``environment``) are compared
    entry by entry (``options.epsilon``). Returns ``(changed, unrecorded)``:

    * ``changed``: ``"field: … before, … now"`` for a recorded value that differs, and for
      a field ``saved`` lacks whose value now is not its default;
    * ``unrecorded``: ``"field (now …, its default)"`` for a field ``saved`` lacks (written
      by a dynamtl that did not have it yet) whose value now is its default.

    ``defaults``: the record resolved by the current code (what a field absent from it
    becomes today); without it every absent field counts as changed."""
    flat_saved, flat_current, flat_defaults = _flat(saved), _flat(current), _flat(defaults or {})
    keys = sorted((set(flat_saved) | set(flat_current)) - set(IGNORED_FOR_COMPATIBILITY))
    changed: list[str] = []
    unrecorded: list[str] = []
    for key in keys:
        now = flat_current.get(key, "(absent)")
        if key in flat_saved:
            if flat_saved[key] != now:
                changed.append(f"{key}: {flat_saved[key]!r} before, {now!r} now")
        elif key in flat_defaults and flat_defaults[key] == now:
            unrecorded.append(f"{key} (now {now!r}, its default)")
        else:
            default = f", today's default {flat_defaults[key]!r}" if key in flat_defaults else ""
            changed.append(f"{key}: not recorded before{default}, {now!r} now")
    return changed, unrecorded


def unrecorded_note(where: Path, unrecorded: list[str]) -> str:
    """The one line that says which settings ``where`` did not record and took their
    defaults (see :func:`config_differences`)."""
    return (f"not recorded in {where} (written by a dynamtl without these settings), taken at today's "
            f"defaults: {'; '.join(unrecorded)}")


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``values`` with its tables flattened to ``table.entry`` keys (an empty table has
    no entries: ``"options": {}`` records no option)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
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
