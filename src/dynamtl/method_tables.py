"""The methods tables of the README and of ``docs/methods.md``, made from the methods' facts.

A document marks a generated table with ``<!-- methods-table: NAME -->`` before it and
``<!-- end methods-table -->`` after it; :func:`update` rewrites what lies between from the
registry, and ``tests/test_method_tables.py`` fails when a document differs from it. After
adding or changing a method::

    python -m dynamtl.method_tables README.md docs/methods.md
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

from dynamtl.registry import AGGREGATIONS, WEIGHTINGS, Method

_BLOCK = re.compile(r"(<!-- methods-table: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- end methods-table -->)", re.S)


def _kind(method: Method) -> str:
    if method.kind == "aggregation":
        return "aggregation (default)" if method.name == "sum" else "aggregation"
    notes = ", auxiliary" if method.auxiliary_only else ""
    return "weighting (default)" if method.name == "equal" else f"weighting ({method.family}{notes})"


def _options(method: Method) -> str:
    defaults = method.option_defaults()
    shown = [f"`{n}` (required)" if d is inspect.Parameter.empty else f"`{n}={d!r}`" for n, d in defaults.items()]
    return ", ".join(shown) or "—"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]
    return "\n".join(lines) + "\n"


def overview() -> str:
    """The README's table: every method, its kind, paper and extra passes per step."""
    methods = [*WEIGHTINGS.values(), *AGGREGATIONS.values()]
    return _table(
        ["method", "`--method`", "kind", "paper", "extra passes per step (forward / backward)"],
        [[m.title, f"`{m.name}`", _kind(m), m.paper, f"{m.extra_forward} / {m.extra_backward}"] for m in methods],
    )


def summary() -> str:
    """``docs/methods.md``'s summary: every method with its options and their defaults."""
    methods = [*WEIGHTINGS.values(), *AGGREGATIONS.values()]
    rows = [[f"`{m.name}`", _kind(m), _options(m)] for m in methods]
    return _table(["`--method`", "kind", "options (default)"], rows)


TABLES: dict[str, Callable[[], str]] = {"overview": overview, "summary": summary}


def update(text: str) -> str:
    """``text`` with every marked table regenerated; ``ValueError`` on an unknown table name."""

    def render(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"unknown methods table {name!r}; known: {', '.join(TABLES)}")
        return match.group(1) + TABLES[name]() + match.group(4)

    return _BLOCK.sub(render, text)


def main(paths: list[str]) -> int:
    """Rewrite the marked tables of ``paths`` in place; prints the files that changed."""
    for path in map(Path, paths):
        old = path.read_text(encoding="utf-8")
        new = update(old)
        if new != old:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
