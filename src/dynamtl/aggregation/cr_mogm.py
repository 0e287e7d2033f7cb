"""CR-MOGM: a moving average of any aggregation's weights (Zhou et al., NeurIPS 2022)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._solvers import check_jacobian, combine_rows
from dynamtl.aggregation.base import GradientAggregation
from dynamtl.facts import aggregation_facts


class CRMOGM(GradientAggregation):
    r"""Correlation-reduced multi-objective gradient manipulation: smooth the weights that an
    aggregation gives the task gradients over the steps.

    With α̂ₜ the weights the wrapped aggregation gives this step's rows (its update is
    Σₖ α̂ₜ,ₖ gₖ) and a smoothing rate β,

    .. math::

        \alpha_t = \beta\, \alpha_{t-1} + (1 - \beta)\, \hat\alpha_t , \qquad
        d_t = \sum_k \alpha_{t,k}\, g_{t,k},

    starting from α₁ = α̂₁. From *On the Convergence of Stochastic Multi-Objective Gradient
    Manipulation and Beyond* (Zhou, Zhang, Jiang, Zhao, Yang, Chen, NeurIPS 2022): the
    weights computed from one mini-batch are correlated with its gradients, which biases
    MGDA-type updates; averaging them over steps removes most of the correlation, with
    convergence guarantees when β → 1 as the learning rate decays (their Corollary 1; set
    ``beta`` between steps for such a schedule).

    Args:
        aggregation: the wrapped gradient aggregation, or its registry name (``"upgrad"``;
            built with its default options), the default ``"mgda"`` (:class:`MGDA`, the
            paper's main case). A name must be one of :func:`wrappable_names`: the gradient
            aggregations that weigh one batch's rows (not Sum, nothing to smooth; not MoCo,
            SDMGrad or MoDo, which carry their weights across batches themselves; not
            CR-MOGM). From the command line: ``--option aggregation=upgrad`` (the wrapped
            aggregation takes its default options there; compose it in Python for others).
            Its weights are its :meth:`row_weights` where it has them, otherwise
            the least-squares weights of its update (see :class:`GradientAggregation`); in a
            step, of its update on the shared parameters layer by layer where it works by
            layer (``GradVac(granularity="layer")``).
        beta: β ∈ [0, 1], the weight of the past (default 0.9, TorchJD's); 0 is the wrapped
            aggregation, 1 freezes the first weights.
        seed: the seed of an aggregation given by name that draws random numbers (PCGrad,
            GradDrop, GradVac); the run's seed on the command line. Unused otherwise.

    The averaged weights are saved in the state dict (with the wrapped aggregation's state).
    A change in the number of tasks restarts the average.

    Differences to the paper: it states the schedule of β; here β is constant unless you
    change it. Rows that are zero in a step keep their averaged weight (it multiplies zero).

    >>> import torch
    >>> smoothed = CRMOGM(beta=0.5)
    >>> smoothed.combine(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    tensor([0.5000, 0.5000])
    >>> smoothed.combine(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # MGDA alone: [0.9, 0.3]
    tensor([0.7000, 0.9000])
    """

    facts = aggregation_facts(
        "cr-mogm", "CR-MOGM",
        "Zhou et al., On the Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond, NeurIPS 2022",
        options=("aggregation", "beta"),
        context={"seed": "seed"},
    )

    option_ranges = intervals(beta="[0, 1]", seed="[0, inf)")
    # a name must be of the per-batch gradient aggregations (checked with beta, in __new__)
    option_checks = MappingProxyType({"aggregation": lambda value: _check_aggregation(value)})

    def __init__(self, aggregation: str | GradientAggregation = "mgda", beta: float = 0.9, seed: int = 0) -> None:
        super().__init__()
        self.aggregation = _built(aggregation, seed) if isinstance(aggregation, str) else aggregation
        self._arguments["aggregation"] = self.aggregation  # the repr shows what is smoothed
        self.beta = float(beta)
        self.average: Tensor | None = None

    @property
    def by_layer(self) -> bool:
        return self.aggregation.by_layer

    def row_weights(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        return self._smoothed(self.aggregation.weights_and_update(jacobian)[0])

    def combine_shared(self, jacobian: Tensor, blocks: Sequence[tuple[str, int]]) -> tuple[Tensor, Tensor]:
        """The wrapped aggregation's weights on the shared parameters' ``blocks`` (GradVac per
        layer treats each layer apart), smoothed."""
        check_jacobian(type(self).__name__, jacobian)
        alpha = self._smoothed(self.aggregation.combine_shared(jacobian, blocks)[0])
        return alpha, combine_rows(alpha, jacobian)

    def _smoothed(self, weights: Tensor) -> Tensor:
        """The moving average after this step's weights ``weights`` (updated in place)."""
        current = weights.double().cpu()
        if self.average is None or self.average.shape != current.shape:
            self.average = current
        else:
            self.average = self.beta * self.average + (1.0 - self.beta) * current
        return self.average.clone()

    def get_extra_state(self) -> dict[str, Any]:
        return {"average": self.average}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.average = state["average"]


def wrappable_names() -> list[str]:
    """The registry names :class:`CRMOGM` takes as its ``aggregation``: every registered
    gradient aggregation that weighs one batch's rows (not Sum, nothing to smooth; not those
    that carry rows or weights across batches, MoCo, SDMGrad, MoDo; not CR-MOGM itself)."""
    return list(_wrappable())


def _wrappable() -> dict[str, type[GradientAggregation]]:
    from dynamtl.registry import AGGREGATIONS  # the registry imports this module's package

    return {
        name: method.factory for name, method in AGGREGATIONS.items()
        if issubclass(method.factory, GradientAggregation) and not method.factory.rows_across_batches
        and not issubclass(method.factory, CRMOGM)
    }


def _built(name: str, seed: int) -> GradientAggregation:
    """The aggregation registered as ``name`` with its default options, seeded with ``seed``
    where it takes a seed."""
    factory = _wrappable()[name]
    return factory(seed=seed) if "seed" in inspect.signature(factory.__init__).parameters else factory()


def _check_aggregation(value: Any) -> None:
    """``CRMOGM``'s ``aggregation``: a per-batch gradient aggregation, or the registry name
    of one; ``TypeError``/``ValueError`` naming the option, the allowed names and the fix."""
    if isinstance(value, str):
        from dynamtl.registry import AGGREGATIONS, WEIGHTINGS

        allowed = _wrappable()
        if value in allowed:
            return
        method = AGGREGATIONS.get(value)
        if method is not None and issubclass(method.factory, CRMOGM):
            why = "which is CR-MOGM itself"
        elif method is not None and issubclass(method.factory, GradientAggregation):
            why = f"which carries its weights (or gradients) across batches itself: run it alone (--method {value})"
        elif method is not None:
            why = "which adds the task gradients with fixed weights: there is nothing to smooth"
        elif value in WEIGHTINGS:
            why = (f"which is a weighting, not a gradient aggregation: combine them as "
                   f"--method {value}+cr-mogm")
        else:
            why = "which is not the name of an aggregation"
        raise ValueError(
            f"CRMOGM's option aggregation names the gradient aggregation whose weights it smooths, one of "
            f"{', '.join(allowed)}; got {value!r}, {why}. Give e.g. --option aggregation=upgrad "
            f"(CRMOGM(aggregation='upgrad') in Python)"
        )
    if not isinstance(value, GradientAggregation):
        raise TypeError(
            f"CRMOGM smooths the weights of a gradient aggregation (PCGrad, MGDA, UPGrad...), "
            f"not of {type(value).__name__}: give one, or its name (CRMOGM(aggregation='upgrad'))"
        )
    if isinstance(value, CRMOGM):  # as its registry name 'cr-mogm' is refused
        raise ValueError(
            f"CRMOGM smooths the weights an aggregation gives one batch's rows; {value!r} already averages its "
            "weights over steps: give the inner aggregation to one CRMOGM and raise its beta to smooth more"
        )
    if value.rows_across_batches:
        raise ValueError(
            f"CRMOGM smooths the weights an aggregation gives one batch's rows; {type(value).__name__} "
            "already carries its weights (or gradients) over steps and batches: use it alone"
        )
