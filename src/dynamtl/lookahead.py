"""One step of a real optimizer, emulated as a pure function of the gradient.

``LookAhead(optimizer, params).step(g)`` returns the parameters θ' that
``optimizer.step()`` would produce from gradient ``g``, reading the optimizer's
``param_groups`` and ``state`` (per-group learning rates, momentum buffers, Adam moments,
including the very first step when the state is empty) and changing nothing. The result
is differentiable in ``g``, so an exact hypergradient can flow through it, and no copy of
the model is made.

Every supported update is *elementwise* in the gradient, so its Jacobian ∂θ'/∂g is
diagonal; :meth:`LookAhead.jacobian_diagonal` returns that diagonal, which turns the
meta-gradient v = ∇θ' L_val into the direction u = (∂θ'/∂g)ᵀ v used by Auto-Lambda.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
Tensors = list[Tensor] | tuple[Tensor, ...]  # what torch._foreach_* takes and returns


class LookAhead:
    """Emulates ``optimizer.step()`` for the parameters ``params`` (name -> parameter).

    Supported: :class:`torch.optim.SGD` (momentum, dampening, Nesterov, weight decay,
    maximize), :class:`torch.optim.Adam` and :class:`torch.optim.AdamW` (coupled and
    decoupled weight decay, AMSGrad, maximize). Parameters that the optimizer does not own,
    or whose gradient is ``None``, stay where they are, as in ``optimizer.step()``.

    Cost: the parameters are grouped by optimizer group once, at construction; SGD's update
    is a handful of ``torch._foreach_*`` calls per group (no per-parameter Python loop), and
    its Jacobian needs no autograd (see :meth:`jacobian_diagonal`). Adam's update runs per
    tensor.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter]) -> None:
        if type(optimizer) not in SUPPORTED:
            names = ", ".join(f"torch.optim.{c.__name__}" for c in SUPPORTED)
            raise TypeError(
                f"the look-ahead cannot emulate {type(optimizer).__name__}; supported optimizers: {names}"
            )
        self.optimizer = optimizer
        self.params = dict(params)
        self._sgd = isinstance(optimizer, torch.optim.SGD)
        owner = {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}
        # (group, names of its parameters among ``params``), in the optimizer's group order
        self._groups: list[tuple[dict[str, Any], list[str]]] = [
            (group, [n for n, p in self.params.items() if owner.get(id(p)) == i])
            for i, group in enumerate(optimizer.param_groups)
        ]

    def step(self, grads: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
        """θ' = what ``optimizer.step()`` would make of θ with gradient ``grads``."""
        out = {n: p.detach() for n, p in self.params.items()}
        update = _sgd if self._sgd else _adam
        for group, names, grad_list, states in self._moving(grads):
            params = [out[n] for n in names]
            out.update(zip(names, update(params, grad_list, group, states)))
        return out

    def jacobian_diagonal(self, grads: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
        """diag(∂θ'/∂g) at ``grads``, for the parameters with a gradient.

        Exact because every supported update is elementwise. SGD's update is affine in g,
        θ' = θ − lr·s·c·g + (terms free of g) with s = −1 under ``maximize`` (else 1) and c
        = 1 on the first step (b = d), 1 − τ afterwards, plus μ·(that) under Nesterov: the
        diagonal is the constant −lr·s·c, returned as a broadcast view (no memory). Adam's
        is taken by autograd through the emulated step. Parameters the optimizer does not
        own have 0.
        """
        out: dict[str, Tensor] = {}
        for group, names, grad_list, states in self._moving(grads):
            if self._sgd:
                out.update(
                    (n, g.new_full((), _sgd_slope(group, s)).expand_as(g)) for n, g, s in zip(names, grad_list, states)
                )
                continue
            with torch.enable_grad():
                leaves = [g.detach().requires_grad_() for g in grad_list]
                moved = _adam([self.params[n].detach() for n in names], leaves, group, states)
                diag = torch.autograd.grad(moved, leaves, [torch.ones_like(g) for g in leaves], allow_unused=True)
            out.update((n, torch.zeros_like(g) if d is None else d) for n, g, d in zip(names, leaves, diag))
        unowned = (n for n in self.params if n not in out and grads.get(n) is not None)
        return {**out, **{n: torch.zeros_like(grads[n]) for n in unowned}}  # type: ignore[arg-type]

    def _moving(
        self, grads: Mapping[str, Tensor | None]
    ) -> Iterator[tuple[dict[str, Any], list[str], list[Tensor], list[dict[str, Any]]]]:
        """Per optimizer group: the group, the names of its parameters that have a gradient,
        those gradients and the parameters' optimizer states."""
        state = self.optimizer.state
        for group, owned in self._groups:
            names = [n for n in owned if grads.get(n) is not None]
            if names:
                yield group, names, [grads[n] for n in names], [state.get(self.params[n], {}) for n in names]  # type: ignore[misc]


def learning_rates(optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter]) -> dict[str, float]:
    """The current learning rate of every parameter in ``params`` that ``optimizer`` owns."""
    rate = {id(p): float(group["lr"]) for group in optimizer.param_groups for p in group["params"]}
    return {n: rate[id(p)] for n, p in params.items() if id(p) in rate}


def _sgd(
    params: Tensors, grads: Tensors, group: dict[str, Any], states: list[dict[str, Any]]
) -> Tensors:
    """torch.optim.SGD on one group: d = g + wd·θ; b = μ·b + (1−τ)·d (b = d at first);
    θ' = θ − lr·(d + μ·b if Nesterov else b), with ``torch._foreach_*`` calls (no parameter loop)."""
    if group.get("maximize", False):
        grads = torch._foreach_neg(grads)
    if group["weight_decay"] != 0:
        grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
    momentum = group["momentum"]
    if momentum != 0:
        buffers = list(grads)  # b = d on the first step
        warm = [i for i, s in enumerate(states) if s.get("momentum_buffer") is not None]
        if warm:
            previous = torch._foreach_mul([states[i]["momentum_buffer"] for i in warm], momentum)
            updated = torch._foreach_add(previous, [grads[i] for i in warm], alpha=1 - group["dampening"])
            for i, b in zip(warm, updated):
                buffers[i] = b
        grads = torch._foreach_add(grads, buffers, alpha=momentum) if group["nesterov"] else buffers
    return torch._foreach_add(params, grads, alpha=-float(group["lr"]))


def _sgd_slope(group: dict[str, Any], state: dict[str, Any]) -> float:
    """∂θ'/∂g of :func:`_sgd`, the same for every element of a parameter."""
    slope = 1.0
    momentum = group["momentum"]
    if momentum != 0:
        buffer = 1.0 if state.get("momentum_buffer") is None else 1 - group["dampening"]
        slope = 1 + momentum * buffer if group["nesterov"] else buffer
    sign = -1.0 if group.get("maximize", False) else 1.0
    return -float(group["lr"]) * sign * slope


def _adam(
    params: Tensors, grads: Tensors, group: dict[str, Any], states: list[dict[str, Any]]
) -> Tensors:
    """torch.optim.Adam/AdamW on one group, tensor by tensor; see :func:`_adam_one`."""
    return [_adam_one(p, g, group, s) for p, g, s in zip(params, grads, states)]


def _adam_one(p: Tensor, g: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
    """torch.optim.Adam/AdamW: m = β₁m + (1−β₁)g; v = β₂v + (1−β₂)g²;
    θ' = θ − lr/(1−β₁ᵗ) · m / (√(v/(1−β₂ᵗ)) + ε), with weight decay added to g (Adam) or
    θ scaled by 1 − lr·wd first (AdamW, ``decoupled_weight_decay``)."""
    if group.get("maximize", False):
        g = -g
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    decoupled = group.get("decoupled_weight_decay", False)
    if wd != 0:
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    step = float(state["step"]) + 1 if "step" in state else 1.0
    m = beta1 * state["exp_avg"] + (1 - beta1) * g if "exp_avg" in state else (1 - beta1) * g
    v = beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g if "exp_avg_sq" in state else (1 - beta2) * g * g
    if group.get("amsgrad", False):
        v = torch.maximum(state["max_exp_avg_sq"], v) if "max_exp_avg_sq" in state else v
    bias1 = 1 - beta1**step
    bias2 = 1 - beta2**step
    denom = _sqrt0(v) / bias2**0.5 + eps
    return p - (lr / bias1) * m / denom


def _sqrt0(v: Tensor) -> Tensor:
    """√v with derivative 0 (not 0·∞ = nan) where v = 0, i.e. where the gradient has always been 0."""
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, 1.0).sqrt(), 0.0)
