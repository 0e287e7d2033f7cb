"""JSON-lines logs (``steps.jsonl``, ``epochs.jsonl``, ``events.jsonl``) read back without
trusting them: a damaged line is named and left out, never a crash."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("dynamtl")


@dataclass
class Records:
    """The records of a log and what was wrong with it.

    Attributes:
        records: every line that is a JSON object, in order.
        bad_lines: the 1-based numbers of the lines that are not (a cut or garbled line).
        partial_line: the number of a last line that lacks its newline (a writer was cut
            off, or is writing it), else ``None``.
        sizes: the byte offset after each kept record (to truncate the file to one).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    partial_line: int | None = None
    sizes: list[int] = field(default_factory=list)


def parse_records(data: bytes) -> Records:
    """The records of the JSON-lines bytes ``data`` (see :class:`Records`)."""
    out = Records()
    offset = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        offset += len(line) + 1
        if number == len(lines):  # after the last newline: empty, or a line cut off
            out.partial_line = number if line.strip() else None
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            record = None
        if isinstance(record, dict):
            out.records.append(record)
            out.sizes.append(offset)
        else:
            out.bad_lines.append(number)
    return out


def read_records(path: Path, *, live: bool = True) -> list[dict[str, Any]]:
    """The records of the log ``path``, saying (once, as a warning naming the file and
    the lines) which lines were left out as damaged. With ``live``, a last line without its
    newline is taken for the one a running run is writing, and left out silently."""
    parsed = parse_records(path.read_bytes())
    bad = parsed.bad_lines + ([parsed.partial_line] if parsed.partial_line and not live else [])
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        logger.warning("%s: left out %d damaged line(s) (line %s)", path, len(bad), shown)
    return parsed.records
