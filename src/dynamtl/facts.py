"""The facts of a method, kept next to its class: its command-line name, family, paper, cost
and options.

Every weighting and aggregation that users may pick declares them as a class attribute
``facts``; the registry (:mod:`dynamtl.registry`), ``dynamtl list``, the README's methods
table and the summary of ``docs/methods.md`` are all made from them (a test fails when the
documents and the facts disagree). Adding a method is therefore: its file (class, maths,
facts), its tests, its export in ``dynamtl.weighting``/``dynamtl.aggregation`` and
``dynamtl``, and its entry in ``docs/methods.md``. Beside the facts, the class declares the
interval of each number option (``option_ranges = intervals(beta="[0, 1]")``, see
:func:`dynamtl._helpers.check_arguments`; for a per-task list or mapping it bounds each
value), its per-task options that are task weights (``weight_options = ("pref",)``: not
empty, not all 0, each 0 or in 1e-30..1e30 unless also in ``relative_weight_options``, whose
scale the method removes) and its options that name parameters of the model
(``parameter_options = ("layer",)``: checked against the model before training); the kinds
of its options (numbers, flags, per-task lists ``Sequence[float]``, task names,
``Mapping[str, float]`` by task, ``Literal`` choices, callables) are checked from its type
hints, on construction and when it is bound to its tasks, with no code of its own, and
tests/test_edges.py covers it from the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

ContextField = Literal["primary", "seed"]


@dataclass(frozen=True)
class Facts:
    """What the registry and the documents say about one method.

    Attributes:
        name: the command-line name (``"auto-lambda"``), unique over weightings and
            aggregations.
        title: the name in tables (``"Auto-Lambda"``).
        family: what the method looks at: ``"losses"``, ``"gradients"``,
            ``"meta-learning"``, ``"look-ahead"`` (weightings), ``"gradient aggregation"``.
        paper: authors, title, venue and year ("" for methods without one).
        extra_forward, extra_backward: forward and backward passes per step beyond those of
            Equal weighting with Sum (1 forward, 1 backward) for T tasks. The T per-task
            backward passes of gradient-based methods are shared between a weighting and an
            aggregation that both need them.
        options: the keyword arguments of the class's ``__init__`` that users may set from
            the command line.
        context: keyword arguments filled by the run, not by the user: parameter name ->
            ``"primary"`` (the primary tasks' names) or ``"seed"`` (the run's seed).
        auxiliary_only: the method weighs auxiliary tasks against primary ones and needs
            auxiliary mode.
        batches_per_step: independent training mini-batches one step reads (1; 3 for
            SDMGrad and MoDo, whose weights come from the products of task gradients of
            different batches): :meth:`MultiTask.step <dynamtl.MultiTask.step>` takes the
            others as ``extra_batches``.
    """

    name: str
    title: str
    family: str
    paper: str
    extra_forward: str = "0"
    extra_backward: str = "0"
    options: tuple[str, ...] = ()
    context: Mapping[str, ContextField] = field(default_factory=dict)
    auxiliary_only: bool = False
    batches_per_step: int = 1

    @property
    def passes(self) -> str:
        """``"forward / backward"`` extra passes, as in the tables."""
        return f"{self.extra_forward} / {self.extra_backward}"


def aggregation_facts(
    name: str,
    title: str,
    paper: str,
    options: tuple[str, ...] = (),
    context: Mapping[str, ContextField] | None = None,
    extra_backward: str = "T−1",
    batches_per_step: int = 1,
) -> Facts:
    """The facts of a gradient aggregation: by default no extra forward pass and the T
    per-task gradients of the shared parameters (T − 1 backward passes beyond one); with
    ``batches_per_step`` b > 1, one forward pass and T backward passes more per extra batch."""
    extra_forward = str(batches_per_step - 1)
    if batches_per_step > 1:
        extra_backward = f"{batches_per_step}T−1"
    return Facts(
        name, title, "gradient aggregation", paper, extra_forward, extra_backward, options, dict(context or {}),
        batches_per_step=batches_per_step,
    )
