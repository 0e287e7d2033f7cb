"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018): weights that balance gradient norms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dynamtl._helpers import intervals
from dynamtl.aggregation.base import shared_parameters
from dynamtl.context import Gradients, StepContext, widened
from dynamtl.facts import Facts
from dynamtl.weighting.base import MetaOptimizerFactory, OwnOptimizer, Weighting


class GradNorm(OwnOptimizer, Weighting):
    r"""Learned weights wᵢ that make every task's gradient norm on a shared layer W follow
    its relative training rate.

    From *GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
    Networks* (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018). With

        Gᵢ = ‖∇_W (wᵢ Lᵢ)‖ = wᵢ ‖∇_W Lᵢ‖,   Ḡ = meanⱼ Gⱼ,
        L̃ᵢ = Lᵢ(t) / Lᵢ(0),   rᵢ = L̃ᵢ / meanⱼ L̃ⱼ,

    the GradNorm loss L_grad = Σᵢ |Gᵢ − Ḡ · rᵢ^α| is differentiated with respect to w
    only, the target Ḡ · rᵢ^α held constant, so ∂L_grad/∂wᵢ = sign(Gᵢ − Ḡ rᵢ^α) ‖∇_W Lᵢ‖.
    w is updated by its own optimizer, then clamped at 1e-6 (a weight never turns
    negative, which would be gradient ascent on its task) and renormalised to Σᵢ wᵢ = T. The step's
    weights are w *before* that update, as in the paper's algorithm. Tasks that train
    slowly (large rᵢ) get a larger gradient share; α sets how strongly. Lᵢ(0) is the loss
    of the first step this weighting sees (saved in the state dict).

    Because Gᵢ = wᵢ ‖∇_W Lᵢ‖, the per-task gradients of the step
    (:meth:`StepContext.task_gradients`, one backward pass per task, shared with the
    aggregation, which then needs no further backward pass) give L_grad and its gradient
    without the double backward pass of the paper's formulation.

    W is ``layer``: one parameter name or several (their gradients are concatenated, e.g.
    the weight and bias of one layer); every task's loss must depend on it. By default it
    is the weight of the last shared layer, the paper's choice: among the parameters that
    every task's loss depends on, the last with two or more dimensions (a weight matrix or
    kernel), or the last of all if none has. "Last" follows the model's parameter
    registration order, which is usually but not always the forward order: name the layer
    when in doubt.

    Differences to the paper: the paper trains w with the network's optimizer (its learning
    rate for w is not given separately); here w has its own optimizer, Adam with learning
    rate ``lr``, so that how fast the weights move does not depend on the model's optimizer.
    Adam moves each wᵢ by at most about ``lr`` per step (lr = 1e-3: a weight can travel by
    1 in about a thousand steps). No official code was released.

    A task whose loss has no gradient in a step (no labelled sample in the batch) is left
    out of that step's L_grad, Ḡ and mean rate; its weight does not change and the others
    share the rest of T. Lᵢ(0) is the loss of the first step in which task i has a gradient.
    Norms and weights are float32 for a half-precision model.

    Args:
        alpha: α, the strength of the pull towards equal training rates (1.5 by default;
            the paper tunes it per problem, larger for more different tasks).
        lr: learning rate of the default Adam optimizer of w.
        meta_optimizer: optional ``factory(params) -> optimizer`` replacing that Adam.
        layer: the name(s) of the shared parameter(s) W, or ``None`` for the default above.

    Attributes:
        layer_names: the parameter names used as W (resolved at the first step).
        last_loss: L_grad of the last step.
    """

    facts = Facts(
        "gradnorm", "GradNorm", "gradients", "Chen, Badrinarayanan, Lee & Rabinovich, GradNorm, ICML 2018",
        "0", "T−1", options=("alpha", "lr", "layer"),
    )

    # buffers (registered in __init__)
    initial_losses: Tensor
    started: Tensor

    option_ranges = intervals(alpha="[0, inf)", lr="(0, inf)")
    parameter_options = ("layer",)

    def __init__(
        self,
        alpha: float = 1.5,
        *,
        lr: float = 1e-3,
        meta_optimizer: MetaOptimizerFactory | None = None,
        layer: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(layer, str):
            layer = [layer]
        if layer is not None and not layer:
            raise ValueError("GradNorm's option layer is empty: name at least one shared parameter, or pass None "
                             "for the default")
        if layer is not None and not all(isinstance(n, str) and n for n in layer):
            raise ValueError(f"GradNorm's option layer holds an empty or non-string name: {list(layer)!r}; name "
                             "shared parameters as model.named_parameters() does, e.g. 'trunk.0.weight'")
        self.alpha, self.lr, self.factory = alpha, lr, meta_optimizer
        self.layer = None if layer is None else tuple(layer)
        self.task_weights = nn.Parameter(torch.zeros(0))
        self.register_buffer("initial_losses", torch.zeros(0))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self.layer_names: tuple[str, ...] = ()
        self.last_loss: Tensor | None = None

    def _on_bind(self) -> None:
        self.task_weights.data = torch.ones(self.num_tasks)
        self.initial_losses = torch.zeros(self.num_tasks)
        self._own_optimizer(self.task_weights, self.factory, lr=self.lr)

    def weights(self, ctx: StepContext) -> Tensor:
        grads = ctx.task_gradients()
        present = [any(g is not None for g in task.values()) for task in grads]
        w = self.task_weights
        if sum(present) < 2:  # nothing to balance in this step
            return w.detach().clone().to(widened(ctx.losses))
        names = [n for n, p in zip(self.task_names or (), present) if p]
        self.layer_names = self._resolve_layer([g for g, p in zip(grads, present) if p], names)
        active = torch.tensor(present, device=w.device)
        norms = torch.stack([_norm(g, self.layer_names, w) for g in grads])
        losses = ctx.losses.detach().to(w)
        unset = active & (self.initial_losses == 0)  # L(0) is recorded when a task first has a gradient
        if bool(unset.any()):
            if bool((losses[unset] <= 0).any()):
                raise ValueError(
                    f"GradNorm divides by the first losses {losses.tolist()}: every task loss must be > 0 "
                    "(shift a loss that can reach 0 or below by a constant)"
                )
            self.initial_losses = torch.where(unset, losses, self.initial_losses)
        self.started.fill_(True)
        used = w.detach().clone()
        ratios = torch.where(active, losses / torch.where(active, self.initial_losses, 1.0), 0.0)
        rates = ratios / ratios[active].mean()
        with torch.enable_grad():
            gradnorms = w * norms
            target = (gradnorms[active].mean() * rates**self.alpha).detach()
            loss = ((gradnorms - target).abs() * active).sum()
            (grad,) = torch.autograd.grad(loss, w)
        self.last_loss = loss.detach()
        self._own_step(w, grad)
        with torch.no_grad():
            # absent tasks keep their weight; the others stay positive and share the rest of T
            w.copy_(torch.where(active, w.clamp(min=_MIN_WEIGHT), used))
            rest = self.num_tasks - used[~active].sum()
            w.copy_(torch.where(active, w * rest / w[active].sum(), used))
        return used.to(widened(ctx.losses))

    def _resolve_layer(self, grads: list[Gradients], names: list[str]) -> tuple[str, ...]:
        shared = shared_parameters(grads)
        if self.layer is None:
            common = [n for n in shared if all(g[n] is not None for g in grads)]
            if not common:
                raise ValueError(
                    "GradNorm found no parameter that every task's loss depends on: it needs a shared "
                    f"layer W; name one with GradNorm(layer=...) among the shared parameters {shared}"
                )
            matrices = [n for n in common if grads[0][n].dim() >= 2]  # type: ignore[union-attr]
            return ((matrices or common)[-1],)
        bad = [n for n in self.layer if n not in shared]
        if bad:
            raise ValueError(
                f"GradNorm's layer {bad} is not a shared trainable parameter; "
                f"choose among the shared parameters {shared}"
            )
        unused = [t for t, g in zip(names, grads) if all(g[n] is None for n in self.layer)]
        if unused:
            raise ValueError(
                f"the loss of task(s) {unused} does not depend on GradNorm's layer {list(self.layer)}: "
                f"choose a layer every task uses among {shared}"
            )
        return self.layer



_MIN_WEIGHT = 1e-6
"""The smallest weight after an update, before renormalisation: a weight never crosses 0."""


def _norm(grads: Gradients, names: tuple[str, ...], like: Tensor) -> Tensor:
    """‖(g_n)_{n ∈ names}‖₂ over the concatenated gradients (a missing gradient counts 0), in
    ``like``'s dtype (float32 for a half-precision model) and on its device."""
    parts = [grads[n].detach().reshape(-1).to(like) for n in names if grads[n] is not None]  # type: ignore[union-attr]
    return torch.cat(parts).norm() if parts else torch.zeros((), dtype=like.dtype, device=like.device)
