"""Gradient cosine similarity (Du et al., 2018): keep an auxiliary loss only while it helps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from dynamtl.aggregation.base import shared_parameters
from dynamtl.context import Gradients, StepContext, combine_gradients, widened
from dynamtl.facts import Facts
from dynamtl.tasks import name_list
from dynamtl.weighting.base import Weighting, main_and_auxiliary


class GCS(Weighting):
    r"""Auxiliary weights from the cosine similarity of each auxiliary task's gradient with
    the main task's, on the parameters they share.

    From *Adapting Auxiliary Losses Using Gradient Similarity* (Du, Czarnecki, Jayakumar,
    Farajtabar, Pascanu & Lakshminarayanan, 2018). With g_main = Σ_{m ∈ main} ∇θ L_m and,
    for every auxiliary task k, cₖ = cos(g_main, ∇θ Lₖ) over the parameters θₛ that both
    losses depend on, the weights are 1 for the main task(s) and

    * ``variant="unweighted"`` (default): λₖ = 1 if cₖ > 0 else 0;
    * ``variant="weighted"``: λₖ = max(0, cₖ).

    An auxiliary gradient is thus used only while it is a descent direction for the main
    loss, which keeps the guarantee that training converges to critical points of the main
    task. When either gradient is 0 on θₛ the cosine is taken as 0 (λₖ = 0). The per-task
    gradients come from :meth:`StepContext.task_gradients` (one backward pass per task,
    shared with the aggregation, which then needs no further backward pass).

    Difference to the paper: in its multi-task form the auxiliary head's own parameters are
    always trained by the auxiliary loss and only the shared update is gated; here λₖ
    scales the whole of task k's gradient, so a gated auxiliary head also pauses for that
    step.

    Args:
        main: the main task name(s); every other task is auxiliary.
        variant: ``"unweighted"`` or ``"weighted"``.

    Attributes:
        last_cosines: cₖ of the last step, one per auxiliary task in task order.
    """

    facts = Facts(
        "gcs", "GCS", "gradients", "Du et al., Adapting Auxiliary Losses Using Gradient Similarity, 2018",
        "0", "T−1", options=("variant",), context={"main": "primary"}, auxiliary_only=True,
    )

    def __init__(self, main: Sequence[str] | str, *, variant: Literal["unweighted", "weighted"] = "unweighted") -> None:
        super().__init__()
        self.main_names = name_list(main, "main")
        self.variant = variant
        self.main: tuple[int, ...] = ()
        self.auxiliary: tuple[int, ...] = ()
        self.last_cosines: Tensor | None = None

    def _on_bind(self) -> None:
        names = self.task_names or ()
        self.main, self.auxiliary = main_and_auxiliary(names, self.main_names, "GCS")

    def weights(self, ctx: StepContext) -> Tensor:
        grads = ctx.task_gradients()
        main = combine_gradients([grads[m] for m in self.main], [1.0] * len(self.main))
        cosines = torch.stack([_cosine(main, grads[k]) for k in self.auxiliary]).to(widened(ctx.losses))
        self.last_cosines = cosines
        weights = torch.ones_like(widened(ctx.losses.detach()))
        gates = (cosines > 0).to(cosines) if self.variant == "unweighted" else cosines.clamp(min=0.0)
        weights[list(self.auxiliary)] = gates
        return weights


def _cosine(a: Gradients, b: Gradients) -> Tensor:
    """cos(a, b) over the parameters both have a gradient for; 0 if either is 0 there."""
    names = shared_parameters([a, b])
    if not names:  # on the device of the gradients, to be stacked with the other cosines
        first = next((g for g in [*a.values(), *b.values()] if g is not None), None)
        return torch.zeros((), device=None if first is None else first.device)
    x = widened(torch.cat([a[n].detach().reshape(-1) for n in names]))  # type: ignore[union-attr]
    y = widened(torch.cat([b[n].detach().reshape(-1) for n in names]))  # type: ignore[union-attr]
    norms = x.norm() * y.norm()
    return (x @ y) / norms if norms > 0 else torch.zeros((), dtype=x.dtype)
