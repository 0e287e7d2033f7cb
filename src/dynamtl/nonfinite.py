"""Non-finite values in a training step: the error that names where they appeared, and the check.

A step evaluates the losses and gradients of several *passes*: the training pass, and for
some methods a meta pass (Auto-Lambda), perturbed passes (Auto-Lambda's finite
difference), look-ahead passes (HydaLearn) and per-task gradients (GradNorm, GCS,
aggregations). Each pass checks its own values as soon as they exist, so a NaN or an
infinity is reported in the step where it appears, with the pass and the task(s) it came
from. :class:`~dynamtl.MultiTask` then puts back everything the step had changed (see
:class:`dynamtl.step.StepGuard`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class NonFiniteLossError(FloatingPointError):
    """A loss, gradient or weight of a step was NaN or infinite.

    Attributes:
        quantity: what was non-finite (``"loss"``, ``"gradient"``, ``"hypergradient"``…).
        pass_name: the pass it came from (``"training"``, ``"meta"``, ``"perturbation +εu"``,
            ``"look-ahead of task 'b'"``…).
        values: task name -> the non-finite value (for gradients: the first non-finite entry).
        step: the 1-based number of the step, filled in by :class:`~dynamtl.MultiTask`.
        cause: what of the weighting's state may explain it (an Auto-Lambda λ that grew…),
            filled in by :class:`~dynamtl.MultiTask` from ``Weighting.explain_failure()``.
    """

    def __init__(self, quantity: str, pass_name: str, values: dict[str, float], step: int | None = None) -> None:
        super().__init__(quantity, pass_name, values, step)
        self.quantity, self.pass_name, self.values, self.step = quantity, pass_name, values, step
        self.cause = ""

    def __str__(self) -> str:
        where = f"in step {self.step} (1-based)" if self.step is not None else "in this step"
        tasks = f" for task(s) {self.values}" if self.values else ""
        return (
            f"non-finite {self.quantity} {where}{tasks}, in the {self.pass_name} pass; "
            "the model, the optimizer and the weighting are left as they were before the step: "
            + (f"{self.cause}; or " if self.cause else "")
            + "lower the learning rate, check the inputs and targets of that task (and of the meta batch for a meta "
            "pass), or clip gradients"
        )


def check_losses(
    losses: Sequence[Tensor] | Tensor, names: Sequence[str], pass_name: str, quantity: str = "loss"
) -> None:
    """Raise :class:`NonFiniteLossError` naming the tasks whose value in ``losses`` is NaN or
    infinite (one device synchronisation)."""
    values = torch.stack(list(losses)).detach() if not isinstance(losses, Tensor) else losses.detach()
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        found = {n: float(v) for n, v, b in zip(names, values.tolist(), bad.tolist()) if b}
        raise NonFiniteLossError(quantity, pass_name, found)


def check_gradients(grads: Sequence[Sequence[Tensor | None]], names: Sequence[str], pass_name: str) -> None:
    """Raise :class:`NonFiniteLossError` naming the tasks k whose gradients ``grads[k]`` (a
    sequence of tensors or ``None``) hold a NaN or an infinity (one device synchronisation)."""
    flags = [
        torch.stack([g.isfinite().all() for g in task if g is not None]).all()
        if any(g is not None for g in task)
        else None
        for task in grads
    ]
    present = [f for f in flags if f is not None]
    if not present or bool(torch.stack(present).all()):
        return
    found = {}
    for name, task, flag in zip(names, grads, flags):
        if flag is not None and not bool(flag):
            first = next(
                g[~g.isfinite()].reshape(-1)[0] for g in task if g is not None and not bool(g.isfinite().all())
            )
            found[name] = float(first)
    raise NonFiniteLossError("gradient", pass_name, found)
