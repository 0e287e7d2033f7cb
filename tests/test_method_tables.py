"""The methods tables of the README and docs/methods.md are the ones the facts generate, and
the facts agree with the classes they describe."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from dynamtl import method_tables
from dynamtl.registry import AGGREGATIONS, WEIGHTINGS

ROOT = Path(__file__).resolve().parents[1]
METHODS = [*WEIGHTINGS.values(), *AGGREGATIONS.values()]


@pytest.mark.parametrize("document", ["README.md", "docs/methods.md"])
def test_the_documents_tables_are_generated_from_the_facts(document):
    text = (ROOT / document).read_text(encoding="utf-8")
    assert "<!-- methods-table:" in text, f"{document} has lost its generated methods table"
    assert text == method_tables.update(text), (
        f"{document}'s methods table is stale: run python -m dynamtl.method_tables README.md docs/methods.md"
    )


def test_a_stale_table_is_rewritten():
    stale = "before\n<!-- methods-table: summary -->\n| old |\n<!-- end methods-table -->\nafter\n"
    new = method_tables.update(stale)
    assert "| old |" not in new and "`cagrad` | aggregation | `c=0.4`, `rescale=True` |" in new
    assert new.startswith("before\n") and new.endswith("after\n")
    with pytest.raises(ValueError, match="unknown methods table 'nope'"):
        method_tables.update("<!-- methods-table: nope -->\n<!-- end methods-table -->")


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_every_method_has_its_facts_and_a_doc_entry(method):
    parameters = inspect.signature(method.factory.__init__).parameters
    assert set(method.options) <= set(parameters), f"{method.name}: options that the class does not take"
    assert set(method.context) <= set(parameters), f"{method.name}: context fields that the class does not take"
    assert method.paper and method.title and method.extra_forward and method.extra_backward
    if not method.single_task:
        assert method.factory.facts is not None and method.factory.facts.name == method.name
        docs = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
        body = docs.split("<!-- end methods-table -->", 1)[1]
        assert method.title in body or method.factory.__name__ in body, (
            f"docs/methods.md says nothing about {method.title} outside the summary: add its entry"
        )


def test_every_exported_method_class_is_registered():
    import dynamtl

    classes = [getattr(dynamtl, n) for n in dynamtl.__all__]
    declared = {c for c in classes if isinstance(c, type) and vars(c).get("facts") is not None}
    registered = {m.factory for m in METHODS}
    assert declared == registered
