"""Auto-Lambda (Liu, James, Davison & Johns, TMLR 2022): meta-learned task weights."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dynamtl._helpers import intervals
from dynamtl.context import StepContext
from dynamtl.facts import Facts
from dynamtl.nonfinite import check_gradients, check_losses
from dynamtl.objective import Objective, RngState
from dynamtl.tasks import name_list, task_indices
from dynamtl.weighting.base import (
    MetaOptimizerFactory,
    MetaOptimizerName,
    OwnOptimizer,
    Weighting,
)

#: A task whose λ is negative and whose training loss has grown by this factor since λ went
#: below 0 is named in a :class:`NegativeLambdaWarning`.
ASCENT_FACTOR = 100.0


class NegativeLambdaWarning(RuntimeWarning):
    """Auto-Lambda's λ of a task is negative and that task's training loss is growing: the
    negative weight ascends the loss (see :meth:`AutoLambda.weights`)."""


@dataclass
class _Pending:
    """What the lagged variant keeps from step t to update λ at step t+1."""

    theta: dict[str, Tensor]
    jacobian: dict[str, Tensor]
    batch: Any
    rng: RngState
    losses: Tensor  # this process's task losses at θ on ``batch`` (detached)


class AutoLambda(OwnOptimizer, Weighting):
    r"""Task weights λ learned so that one training step most reduces the primary tasks'
    loss on a meta (validation) batch.

    From *Auto-Lambda: Disentangling Dynamic Task Relationships* (Liu, James, Davison &
    Johns, TMLR 2022). With the training loss Σᵢ λᵢ Lᵢ(θ) on the training batch, the
    optimizer's step θ' = step(θ, g), g = Σᵢ λᵢ ∇θ Lᵢ(θ), and the meta loss
    L_val(θ') = Σ_{p ∈ primary} L_p(θ'; meta batch), λ follows

        ∂L_val/∂λᵢ = ⟨∇θ Lᵢ(θ), u⟩,   u = (∂θ'/∂g)ᵀ ∇θ' L_val(θ')

    (for plain SGD, u = −α ∇θ' L_val, the paper's formula). The inner product is a
    directional derivative, computed by central finite differences with two extra
    forward passes and no graph (default, ``hypergradient="finite_difference"``):
    ⟨∇Lᵢ, u⟩ ≈ (Lᵢ(θ + εu) − Lᵢ(θ − εu)) / 2ε with ε = ``epsilon``/‖u‖, i.e. a
    perturbation of norm ``epsilon`` (0.01 as in the paper). ``hypergradient="exact"``
    takes the same inner products exactly, as the derivative in λ of ⟨Σᵢ λᵢ ∇θ Lᵢ, u⟩ (a
    double backward pass), for checking. λ is then updated by its own optimizer (Adam, lr
    ``lr``). Under DDP (torchrun) the virtual step's gradient, ∇θ' L_val and the inner
    products are averaged over the processes: λ is that of one process on the global batch.

    The virtual step is the *real optimizer's* step (SGD with momentum, Adam…, emulated by
    :class:`~dynamtl.lookahead.LookAhead` from its state), not a plain SGD step as in the
    paper's code; for plain SGD without momentum the two agree. The perturbed forward
    passes replay the random state of the training forward pass (same dropout masks) and
    never touch BatchNorm running statistics.

    Under mixed precision (``torch.autocast`` around the step) the forward passes of the
    virtual step run under the caller's autocast, but the finite-difference passes run in
    full precision: their difference is ~``epsilon`` × the directional derivative, below the
    rounding error of a 16-bit loss. Look-ahead and hypergradient arithmetic is float32.

    Modes: multi-task learning (``primary=None``: every task is primary) and auxiliary
    learning (``primary`` a subset; the others only help).

    Order (``order``):

    * ``"lookahead"`` (default, the paper's): at step t, update λ from a virtual step on
      the current training batch, then take the real step with the new λ. The training
      forward pass is shared by both: cost ≈ 1 forward + 2 backward on the training batch,
      1 forward + 1 backward on the meta batch, 2 forward passes without graph.
    * ``"lagged"``: the real step θ_{t+1} *is* the virtual step; at step t+1 λ is updated
      from ∇L_val(θ_{t+1}) and the training batch of step t, so λ lags one step.
      Saves one backward pass on the training batch; keeps a copy of θ_t and of the
      look-ahead Jacobian diagonal between steps. It assumes the optimizer stepped once on
      the gradient that ``backward()`` left (no clipping in between).

    Meta batch: pass one with every step. A *held-out split* (as in the paper's auxiliary
    experiments) measures generalisation but takes data from training; a *reshuffled
    training loader* (the paper's multi-task setup) uses all data, at the risk of λ fitting
    training noise.

    Args:
        primary: the primary task names, or ``None`` for every task.
        init: initial value of every λᵢ (0.1, as in the paper's code).
        lr: learning rate of the λ optimizer (paper, with Adam: 1e-4 on NYUv2, 3e-5
            CityScapes, 3e-4 CIFAR-100).
        meta_optimizer: the λ optimizer: ``"adam"`` (default, the paper's) or ``"sgd"``
            (plain SGD, λ ← λ − ``lr``·∂L_val/∂λ: steps proportional to the
            hypergradient, where Adam's steps are ≈ ``lr`` whatever its size, so a small
            but steady bias moves λ as fast as a large one; the hypergradient is of the
            order of the model's learning rate × gradient norms², so SGD needs a far
            larger ``lr``), or a ``factory(params) -> optimizer``.
        hypergradient: ``"finite_difference"`` (default) or ``"exact"``.
        order: ``"lookahead"`` (default) or ``"lagged"``.
        interval: update λ every ``interval`` steps (1 = every step).
        nonnegative: clamp λ at 0 after every update. Off by default: the paper leaves λ
            unconstrained, and a negative λ lets an auxiliary task be "unlearned".
        epsilon: norm of the finite-difference perturbation.
        difference: ``"central"`` (default, the paper's: (Lᵢ(θ+εu) − Lᵢ(θ−εu))/2ε, error
            O(ε²), two forward passes) or ``"forward"``: (Lᵢ(θ+εu) − Lᵢ(θ))/ε with Lᵢ(θ) the
            training pass's own losses (same batch and dropout masks), error O(ε), one
            forward pass fewer per step.
        normalize: ``"none"`` (default, the paper's: λ unconstrained) or ``"mean"``: after
            every update λ is projected onto {mean(λ) = ``init``} (λᵢ ← λᵢ − mean(λ) + init,
            the Euclidean projection), so that only the *relative* weights are learned and
            the effective learning rate cannot drift with λ. Why: the hypergradients of all
            tasks share a positive common part whenever the tasks' gradients align with the
            primary one (Σᵢ λᵢ ∂/∂λᵢ is the first-order change of L_val from scaling the
            whole step), and Adam's normalised steps turn it into a steady growth of every λ:
            a growing learning rate, not a weighting. With ``nonnegative=True`` the
            projection is onto {λ ≥ 0, mean(λ) = ``init``} (a scaled simplex; Duchi et al.,
            ICML 2008: λᵢ ← max(λᵢ − τ, 0) with τ such that the mean is ``init``), so both
            hold after every update. Use the two together: with the mean fixed, a growing λ
            pushes another below 0, and a negative λ *ascends* its task's loss, which for a
            cross-entropy has no bound and wrecks the shared layers (docs/claims.md).

    λ is unbounded by default; when a run fails on a non-finite loss the message names λ
    if it grew or went negative (:meth:`explain_failure`). A negative λᵢ *ascends* Lᵢ, and
    a loss that grows without becoming non-finite (a cross-entropy reaching 10⁶) wrecks the
    shared layers as surely: when λᵢ < 0 and task i's training loss has grown by
    :data:`ASCENT_FACTOR` (100×) since λᵢ went below 0, a :class:`NegativeLambdaWarning`
    names the task, λᵢ, the step and the losses, once per task (the reference restarts
    whenever λᵢ is back at ≥ 0; it is not kept in checkpoints). In the experiments of
    docs/claims.md it fires in every diverging run (λ lr 1e-2 with ``normalize="mean"``,
    24–40 steps after λ crossed 0) and not where λ dipped to −0.003 harmlessly.
    """

    facts = Facts(
        "auto-lambda", "Auto-Lambda", "meta-learning",
        "Liu, James, Davison & Johns, Auto-Lambda: Disentangling Dynamic Task Relationships, TMLR 2022",
        "3 (1 on the meta batch, 2 without graph)", "2 (1 on the meta batch)",
        options=(
            "init", "lr", "meta_optimizer", "hypergradient", "order", "interval", "nonnegative", "epsilon", "normalize"
        ),
        context={"primary": "primary"},
    )

    needs_meta_batch = True
    needs_optimizer = True
    needs_lookahead = True

    option_ranges = intervals(init="(-inf, inf)", lr="(0, inf)", interval="[1, inf)", epsilon="(0, inf)")

    def __init__(
        self,
        primary: Sequence[str] | str | None = None,
        *,
        init: float = 0.1,
        lr: float = 1e-4,
        meta_optimizer: MetaOptimizerName | MetaOptimizerFactory = "adam",
        hypergradient: Literal["finite_difference", "exact"] = "finite_difference",
        order: Literal["lookahead", "lagged"] = "lookahead",
        interval: int = 1,
        nonnegative: bool = False,
        epsilon: float = 0.01,
        difference: Literal["central", "forward"] = "central",
        normalize: Literal["none", "mean"] = "none",
    ) -> None:
        super().__init__()
        if normalize == "mean" and nonnegative and init <= 0:
            raise ValueError(
                f"normalize='mean' with nonnegative=True keeps λ ≥ 0 at mean init: init must be > 0, got {init}"
            )
        if hypergradient == "exact" and order == "lagged":
            raise ValueError("the exact hypergradient differentiates through the virtual step: use order='lookahead'")
        self.primary_names = None if primary is None else name_list(primary, "primary")
        self.init, self.lr, self.factory = init, lr, meta_optimizer
        self.hypergradient, self.order, self.interval = hypergradient, order, interval
        self.needs_step_per_backward = order == "lagged"
        self.nonnegative, self.epsilon, self.difference = nonnegative, epsilon, difference
        self.normalize = normalize
        self.lambdas = nn.Parameter(torch.zeros(0))
        self.primary: tuple[int, ...] = ()
        self._pending: _Pending | None = None
        self.last_hypergradient: Tensor | None = None
        self._below_zero: dict[int, tuple[int, float]] = {}  # task -> (step λ went < 0, its loss then)
        self._warned: set[int] = set()

    def _on_bind(self) -> None:
        names = self.task_names or ()
        self.primary = tuple(range(len(names))) if self.primary_names is None else task_indices(
            names, self.primary_names, role="primary"
        )
        self.lambdas.data = torch.full((len(names),), float(self.init))
        self._own_optimizer(self.lambdas, self.factory, lr=self.lr)

    def weights(self, ctx: StepContext) -> Tensor:
        due = ctx.step % self.interval == 0
        if self.order == "lookahead" and due:
            self._update(self._hypergradient_lookahead(ctx), ctx)
        elif self.order == "lagged" and self._pending is not None:
            pending, self._pending = self._pending, None
            theta_next = ctx.current_params()
            self._update(self._finite_difference(ctx.objective, pending, theta_next, ctx.meta_batch), ctx)
        self._watch_ascent(ctx)
        return self.lambdas.detach().clone()

    def _watch_ascent(self, ctx: StepContext) -> None:
        """Warn (:class:`NegativeLambdaWarning`, once per task) when a task with λᵢ < 0 has
        a training loss :data:`ASCENT_FACTOR` times the one it had when λᵢ went below 0."""
        negative = (self.lambdas.detach() < 0).tolist()
        if not any(negative) and not self._below_zero:
            return
        losses = ctx.losses.detach().tolist() if any(negative) else []
        names = self.task_names or ()
        for i, below in enumerate(negative):
            if not below:
                self._below_zero.pop(i, None)
                continue
            start, reference = self._below_zero.setdefault(i, (ctx.step + 1, losses[i]))
            if i in self._warned or not losses[i] > ASCENT_FACTOR * reference > 0:
                continue
            self._warned.add(i)
            warnings.warn(
                f"Auto-Lambda: task {names[i]!r} has λ = {float(self.lambdas[i]):.3g} < 0 since step {start} "
                f"(1-based), and its training loss grew from {reference:.3g} to {losses[i]:.3g} by step "
                f"{ctx.step + 1}: a negative λ ascends its task's loss, which for a cross-entropy has no upper "
                "bound and wrecks the shared layers; keep λ ≥ 0 with nonnegative=True (with normalize=mean: λ on "
                "the simplex), or lower the λ learning rate (option lr)",
                NegativeLambdaWarning,
                stacklevel=2,
            )

    def after_backward(self, ctx: StepContext) -> None:
        if self.order != "lagged" or ctx.step % self.interval != 0:
            return
        assert ctx.lookahead is not None
        grads = {n: p.grad for n, p in ctx.params.items()}
        self._pending = _Pending(
            {n: p.detach().clone() for n, p in ctx.params.items()},
            ctx.lookahead.jacobian_diagonal(grads),
            ctx.batch,
            ctx.rng,
            _local_losses(ctx),
        )

    def _hypergradient_lookahead(self, ctx: StepContext) -> Tensor:
        assert ctx.lookahead is not None
        names, params = list(ctx.params), list(ctx.params.values())
        exact = self.hypergradient == "exact"
        lam = self.lambdas.detach().requires_grad_(exact)
        precision = ctx.objective.precision
        local = precision.local_gradients((lam * ctx.losses).sum(), params, retain_graph=True, create_graph=exact)
        grads = dict(zip(names, ctx.objective.replicas.means(local)))
        precision.check(list(grads.values()))
        ctx.check_combined_gradient(list(grads.values()), "virtual step")
        with torch.no_grad():
            moved = ctx.lookahead.step(grads)
        pending = _Pending(
            ctx.current_params(), ctx.lookahead.jacobian_diagonal(grads), ctx.batch, ctx.rng, _local_losses(ctx)
        )
        if not exact:
            return self._finite_difference(ctx.objective, pending, moved, ctx.meta_batch)
        # ∂/∂λᵢ of ⟨g(λ), u⟩ with g(λ) = Σ λᵢ ∇θ Lᵢ: ⟨∇θ Lᵢ, u⟩ by a double backward pass
        u = self._direction(ctx.objective, pending, moved, ctx.meta_batch)
        if not u:
            return torch.zeros_like(self.lambdas)
        outputs = dict(zip(names, local))
        differentiated = []
        for n in u:
            output = outputs[n]
            if output is None:
                raise RuntimeError(
                    f"Auto-Lambda: the direction has parameter {n!r}, which has no gradient to differentiate"
                )
            differentiated.append(output)
        (hypergradient,) = torch.autograd.grad(differentiated, lam, list(u.values()))
        return ctx.objective.replicas.mean(hypergradient)

    def _direction(
        self, objective: Objective, at: _Pending, theta_next: dict[str, Tensor], meta_batch: Any
    ) -> dict[str, Tensor]:
        """u = J ⊙ ∇θ' L_val(θ'), the meta-gradient averaged over the processes."""
        leaves = {n: t.detach().requires_grad_() for n, t in theta_next.items()}
        meta_loss = self._meta_loss(objective, leaves, meta_batch)
        if not meta_loss.requires_grad:  # no primary task has a graph on this meta batch
            return {}
        v = objective.precision.gradients(meta_loss, list(leaves.values()), objective.replicas)
        if objective.check_finite:
            primary = "+".join(objective.tasks.names[i] for i in self.primary)
            check_gradients([v], [primary], "meta")
        names = [n for n, g in zip(leaves, v) if g is not None and n in at.jacobian]
        if not names:
            return {}
        present = [g for n, g in zip(leaves, v) if g is not None and n in at.jacobian]
        return dict(zip(names, torch._foreach_mul(present, [at.jacobian[n] for n in names])))

    def _finite_difference(
        self, objective: Objective, at: _Pending, theta_next: dict[str, Tensor], meta_batch: Any
    ) -> Tensor:
        """⟨∇θ Lᵢ(θ; batch), u⟩ for every task i, u = J ⊙ ∇θ' L_val(θ'), by finite differences."""
        u = self._direction(objective, at, theta_next, meta_batch)
        # the norm and the differences in float32 at least: float16 squares overflow, and
        # float16 losses differ by a few units in the last place
        norms = list(torch._foreach_norm(list(u.values()), 2, dtype=self.lambdas.dtype)) if u else []
        norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        if norm == 0.0:
            return torch.zeros_like(self.lambdas)
        eps = self.epsilon / norm
        rounded = objective.precision.autocast is not None  # at.losses came from a 16-bit pass
        # in full precision: a 16-bit forward pass would round away the difference
        with torch.no_grad(), objective.precision.full():
            plus = objective.losses(at.batch, _shifted(at.theta, u, eps), at.rng, "perturbation +εu (training batch)")
            plus = plus.to(self.lambdas.dtype)
            if self.difference == "forward":
                base = (
                    objective.losses(at.batch, at.theta, at.rng, "training (full precision)") if rounded else at.losses
                )
                return objective.replicas.mean((plus - base.to(plus)) / eps)
            minus = objective.losses(at.batch, _shifted(at.theta, u, -eps), at.rng, "perturbation −εu (training batch)")
        return objective.replicas.mean((plus - minus.to(plus)) / (2 * eps))

    def _meta_loss(self, objective: Objective, params: dict[str, Tensor], meta_batch: Any) -> Tensor:
        """Σ_p L_p(θ'; meta batch) over the primary tasks; the meta batch needs their targets only."""
        # summed from the separate losses: an unused task's graph would carry its gradient's
        # infinities into the sum as 0·∞ = NaN
        names = self.task_names or ()
        losses = objective.task_losses(meta_batch, params, pass_name="meta", only=[names[p] for p in self.primary])
        return torch.stack(losses).sum()

    def _update(self, hypergradient: Tensor, ctx: StepContext) -> None:
        if ctx.objective.check_finite:
            check_losses(hypergradient, ctx.objective.tasks.names, "meta", "hypergradient")
        self.last_hypergradient = hypergradient.detach()
        self._own_step(self.lambdas, hypergradient)
        with torch.no_grad():
            if self.normalize == "mean" and self.nonnegative:
                self.lambdas.copy_(_simplex_projection(self.lambdas, self.init * len(self.lambdas)))
            elif self.normalize == "mean":
                self.lambdas.add_(self.init - self.lambdas.mean())
            elif self.nonnegative:
                self.lambdas.clamp_(min=0.0)

    def explain_failure(self) -> str:
        """Names λ when a λ is negative (it ascends its task's loss) or grew (a λ above
        max(1, 2·init) in absolute value: an unbounded λ multiplies the learning rate of its
        task)."""
        lam = self.lambdas.detach()
        values = ", ".join(f"{n}={float(v):.3g}" for n, v in zip(self.task_names or (), lam))
        negative = [n for n, v in zip(self.task_names or (), lam.tolist()) if v < 0]
        if negative:
            return (
                f"Auto-Lambda's λ is negative for {negative} (λ: {values}; from {self.init}): a negative λ ascends "
                "its task's loss, which may have no upper bound: keep λ ≥ 0 with nonnegative=True (with "
                "normalize=mean: λ on the simplex), or lower the λ learning rate (option lr)"
            )
        if lam.numel() == 0 or float(lam.abs().max()) <= max(1.0, 2.0 * abs(self.init)):
            return ""
        return (
            f"Auto-Lambda's λ grew without bound to ({values}) from {self.init} (λ multiplies its task's "
            "learning rate): lower the λ learning rate (option lr), or fix λ's mean with normalize=mean"
        )

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "pending": self._pending}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self._pending = state["pending"]


def _simplex_projection(v: Tensor, total: float) -> Tensor:
    """The Euclidean projection of ``v`` onto {w ≥ 0, Σ w = ``total``} (``total`` > 0):
    max(v − τ, 0) with τ from the sorted values (Duchi, Shalev-Shwartz, Singer & Chandra,
    ICML 2008)."""
    u = torch.sort(v, descending=True).values
    excess = torch.cumsum(u, 0) - total
    ranks = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - excess / ranks > 0).max())
    return torch.clamp(v - excess[rho] / (rho + 1), min=0.0)


def _local_losses(ctx: StepContext) -> Tensor:
    """This process's task losses of the step, detached (``ctx.losses`` holds global values)."""
    return torch.stack([loss.detach() for loss in ctx.task_losses])


def _shifted(theta: dict[str, Tensor], direction: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
    """θ + scale·u (parameters without a direction stay), in one ``torch._foreach_add``."""
    names = list(direction)
    moved = torch._foreach_add([theta[n] for n in names], list(direction.values()), alpha=scale)
    return {**theta, **dict(zip(names, moved))}

