"""The files of a run folder read back without trusting them, for every reader (plots,
``compare``'s controls, tables and reuse, the noise share, resume, ``scripts/claims.py``).

* JSON-lines logs (``steps.jsonl``, ``epochs.jsonl``, ``events.jsonl``): a damaged line —
  not JSON, not an object, a field the log always writes missing (:data:`REQUIRED`) or a
  field of the wrong type (see :func:`record_problem`) — is named with its file and line
  and left out, never a crash.
* The weights of the steps taken (:func:`taken_steps`): a step record that lacks a task's
  weight the others have, or whose weight is not finite, is named and left out too.
* JSON tables (``config.json``, ``results.json``: :func:`read_table`): a file that is not
  JSON, not an object, or lacks or mistypes a field its readers use is refused with one
  :class:`DamagedFile` message naming the file and each problem.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
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
REQUIRED = {"steps.jsonl": ("step",), "epochs.jsonl": ("epoch",), "events.jsonl": ("event",)}
"""The fields that every record of a log has and its readers rely on (by the log's file name)."""
WEIGHT, AGGREGATION_WEIGHT = "weight/", "aggregation_weight/"

SHOWN = 10
"""Lines named in a warning (the count says how many more there are)."""

_warned: set[tuple[str, str, tuple[int, ...]]] = set()


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


def record_problem(record: Any, required: tuple[str, ...] = ()) -> str | None:
    """Why ``record`` (a parsed line) is not a log record, or ``None`` when it is one: it
    must be an object holding the fields ``required``, whose :data:`COUNTERS` are whole
    numbers ≥ 0, whose :data:`NUMBERS` and ``/``-named fields are numbers (``NaN`` and
    ``Infinity`` included), and whose :data:`TEXTS` are strings."""
    if not isinstance(record, dict):
        return f"not a record but {json.dumps(record)[:40]}"
    missing = [key for key in required if key not in record]
    if missing:
        return f"lacks {', '.join(map(repr, missing))}"
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


def parse_records(data: bytes, required: tuple[str, ...] = ()) -> Records:
    """The records of the JSON-lines bytes ``data`` (see :class:`Records`), each holding
    the fields ``required``."""
    out = Records()
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if number == len(lines):  # after the last newline: empty, or a line cut off
            out.partial_line = number if line.strip() else None
            break
        if not line.strip():
            continue
        try:
            problem = record_problem(record := json.loads(line), required)
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
    """The records of the log ``path`` (each with the :data:`REQUIRED` fields of its file
    name), saying (once per process for the same damage, as a warning naming the file, the
    lines and why) which lines were left out as damaged. With ``live``, a last line without
    its newline is taken for the one a running run is writing, and left out silently."""
    return _read(path, live=live).records


def _read(path: Path, *, live: bool = True) -> Records:
    parsed = parse_records(path.read_bytes(), REQUIRED.get(path.name, ()))
    problems = dict(parsed.problems)
    if parsed.partial_line and not live:
        problems[parsed.partial_line] = "cut off (no newline)"
    _warn(path, problems, "damaged line(s)")
    return parsed


def _warn(path: Path, problems: dict[int, str], what: str) -> None:
    """One warning naming ``path``, the lines of ``problems`` and why they were left out
    (once per process for the same lines)."""
    if problems and (key := (str(path.resolve()), what, tuple(problems))) not in _warned:
        _warned.add(key)
        shown = "; ".join(f"line {n}: {why}" for n, why in list(problems.items())[:SHOWN])
        logger.warning("%s: left out %d %s (%s%s)", path, len(problems), what, shown,
                       " …" if len(problems) > SHOWN else "")


def taken_steps(path: Path, prefixes: tuple[str, ...] = (WEIGHT,)) -> list[dict[str, Any]]:
    """The records of the steps a run took (skipped ones left out) in its ``steps.jsonl``
    ``path``, each holding, for every prefix of ``prefixes`` that the log uses, a number
    ``<prefix><task>`` for every task the log has under it (so that a reader may index
    ``record[f"weight/{task}"]`` for every task), and only finite weights and aggregation
    weights. A record that lacks one (``{"step": 3}``, a task's weight missing) or holds a
    non-finite one is named in one warning and left out, as damaged lines are
    (:func:`read_records`)."""
    parsed = _read(path)
    taken = [(line, record) for line, record in zip(parsed.lines, parsed.records) if not record.get("skipped")]
    names = {prefix: list(dict.fromkeys(key for _, record in taken for key in record if key.startswith(prefix)))
             for prefix in prefixes}
    kept, problems = [], {}
    for line, record in taken:
        missing = [key for keys in names.values() for key in keys if key not in record]
        infinite = [key for key, value in record.items()
                    if key.startswith((WEIGHT, AGGREGATION_WEIGHT)) and not math.isfinite(value)]
        if missing:
            problems[line] = f"lacks {', '.join(map(repr, missing))}"
        elif infinite:
            problems[line] = f"{', '.join(map(repr, infinite))} not finite"
        else:
            kept.append(record)
    _warn(path, problems, "step record(s) without every task's weight")
    return kept


class DamagedFile(ValueError):
    """A JSON file of a run folder that is not what dynamtl writes; the message names it
    and each problem."""


Check = Callable[[dict[str, Any]], list[str]]


def read_table(path: Path, check: Check | None = None) -> dict[str, Any]:
    """The JSON object in ``path``; ``FileNotFoundError`` when it is missing,
    :class:`DamagedFile` (``"PATH is damaged (…)"``) when it is not JSON, not an object,
    or ``check`` (e.g. :func:`results_problems`) finds problems in it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise DamagedFile(f"{path} is damaged (not valid JSON: {error})") from error
    if not isinstance(data, dict):
        raise DamagedFile(f"{path} is damaged (it holds a {type(data).__name__}, not a table)")
    problems = check(data) if check else []
    if problems:
        raise DamagedFile(f"{path} is damaged ({'; '.join(problems)})")
    return data


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def fields_problems(data: dict[str, Any], kinds: dict[str, tuple[str, Callable[[Any], bool]]]) -> list[str]:
    """What is wrong with the fields ``kinds`` (name -> what it must be, its check) of ``data``."""
    return [f"{name!r} is missing" if name not in data else f"{name!r} is not {what}"
            if isinstance(data[name], (dict, list)) else f"{name!r} is {json.dumps(data[name])}, not {what}"
            for name, (what, check) in kinds.items() if name not in data or not check(data[name])]


CONFIG_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "benchmark": ("a name", lambda v: isinstance(v, str)),
    "method": ("a name", lambda v: isinstance(v, str)),
    "seed": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "primary": ("a list of task names or null", lambda v: v is None or _texts(v)),
}
"""The fields of ``config.json`` that the report reads (the trainer reads it whole, through
:meth:`~dynamtl.train.config.RunConfig.from_mapping`)."""


def config_problems(config: dict[str, Any], fields: tuple[str, ...] = tuple(CONFIG_FIELDS)) -> list[str]:
    """What is wrong with the ``fields`` of ``config.json`` (those the report reads, by
    default; ``primary`` only when it is there)."""
    return fields_problems(config, {k: CONFIG_FIELDS[k] for k in fields if k != "primary" or k in config})


def _metric_values(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(metrics, dict) and all(_number(v) for v in metrics.values()) for metrics in value.values())


def _directions(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(metrics, list) and all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                          and isinstance(m.get("higher_is_better"), bool) for m in metrics)
        for metrics in value.values())


RESULTS_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "benchmark": ("a name", lambda v: isinstance(v, str)),
    "method": ("a name", lambda v: isinstance(v, str)),
    "seed": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "tasks": ("a list of task names", _texts),
    "primary": ("a list of task names", _texts),
    "val": ("a table task -> metric -> number", _metric_values),
    "test": ("a table task -> metric -> number", _metric_values),
    "metrics": ('a table task -> [{"name", "higher_is_better"}]', _directions),
    "steps": ("a whole number", _whole),
    "skipped_steps": ("a whole number", _whole),
    "seconds": ("a table of numbers train, eval",
                lambda v: isinstance(v, dict) and all(_number(v.get(k)) for k in ("train", "eval"))),
    "best_epoch": ("a whole number or null", lambda v: v is None or _whole(v)),
}
"""The fields of ``results.json`` (``docs/cli.md``) and what each must be."""


def results_problems(results: dict[str, Any]) -> list[str]:
    """What is wrong with ``results.json``'s fields, and whether ``val`` and ``test`` hold
    every metric that ``metrics`` names for every task of ``primary``."""
    problems = fields_problems(results, RESULTS_FIELDS)
    if problems:
        return problems
    for split in ("val", "test"):
        absent = [f"{task}/{metric['name']}" for task in results["primary"]
                  for metric in results["metrics"].get(task, [{"name": "(its metrics)"}])
                  if metric["name"] not in results[split].get(task, {})]
        if absent:
            problems.append(f"{split!r} lacks {', '.join(absent)}")
    return problems
