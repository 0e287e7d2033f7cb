"""JSON-lines logs (``steps.jsonl``, ``epochs.jsonl``, ``events.jsonl``) read back without
trusting them: a damaged line — not JSON, not an object, or a field of the wrong type (see
:func:`record_problem`) — is named with its file and line and left out, never a crash."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("dynamtl")

COUNTERS = ("step", "epoch", "batch")
"""Fields that are whole numbers ≥ 0."""
NUMBERS = ("lr", "seconds", "seconds_train", "seconds_eval", "selection")
"""Fields that are numbers (as are those whose name holds a ``/``: losses, weights, metrics)."""
TEXTS = ("time", "event")
"""Fields that are strings (in ``events.jsonl``)."""

_warned: set[tuple[str, tuple[int, ...]]] = set()


@dataclass
class Records:
    """The records of a log and what was wrong with it.

    Attributes:
        records: every line that is a well-typed JSON object, in order.
        lines: the 1-based line number of each record of ``records``.
        bad_lines: the 1-based numbers of the lines that are not (a cut or garbled line,
            or a value of the wrong type).
        problems: why each bad line was left out (line number -> reason).
        partial_line: the number of a last line that lacks its newline (a writer was cut
            off, or is writing it), else ``None``.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    problems: dict[int, str] = field(default_factory=dict)
    partial_line: int | None = None


def record_problem(record: Any) -> str | None:
    """Why ``record`` (a parsed line) is not a log record, or ``None`` when it is one: it
    must be an object whose :data:`COUNTERS` are whole numbers ≥ 0, whose :data:`NUMBERS`
    and ``/``-named fields are numbers (``NaN`` and ``Infinity`` included), and whose
    :data:`TEXTS` are strings."""
    if not isinstance(record, dict):
        return f"not a record but {json.dumps(record)[:40]}"
    for key, value in record.items():
        if key in COUNTERS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                return f"{key!r} is {json.dumps(value)[:40]}, not a whole number ≥ 0"
        elif key in NUMBERS or "/" in key:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return f"{key!r} is {json.dumps(value)[:40]}, not a number"
        elif key in TEXTS and not isinstance(value, str):
            return f"{key!r} is {json.dumps(value)[:40]}, not a string"
    return None


def parse_records(data: bytes) -> Records:
    """The records of the JSON-lines bytes ``data`` (see :class:`Records`)."""
    out = Records()
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if number == len(lines):  # after the last newline: empty, or a line cut off
            out.partial_line = number if line.strip() else None
            break
        if not line.strip():
            continue
        try:
            problem = record_problem(record := json.loads(line))
        except (ValueError, UnicodeDecodeError):
            problem = "not JSON"
        if problem is None:
            out.records.append(record)
            out.lines.append(number)
        else:
            out.bad_lines.append(number)
            out.problems[number] = problem
    return out


def read_records(path: Path, *, live: bool = True) -> list[dict[str, Any]]:
    """The records of the log ``path``, saying (once per process for the same damage, as a
    warning naming the file, the lines and why) which lines were left out as damaged. With
    ``live``, a last line without its newline is taken for the one a running run is
    writing, and left out silently."""
    parsed = parse_records(path.read_bytes())
    problems = dict(parsed.problems)
    if parsed.partial_line and not live:
        problems[parsed.partial_line] = "cut off (no newline)"
    if problems and (key := (str(path.resolve()), tuple(problems))) not in _warned:
        _warned.add(key)
        shown = "; ".join(f"line {n}: {why}" for n, why in list(problems.items())[:5])
        logger.warning("%s: left out %d damaged line(s) (%s%s)", path, len(problems), shown,
                       " …" if len(problems) > 5 else "")
    return parsed.records
