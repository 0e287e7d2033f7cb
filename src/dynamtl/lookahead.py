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

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


class LookAhead:
    """Emulates ``optimizer.step()`` for the parameters ``params`` (name -> parameter).

    Supported: :class:`torch.optim.SGD` (momentum, dampening, Nesterov, weight decay,
    maximize), :class:`torch.optim.Adam` and :class:`torch.optim.AdamW` (coupled and
    decoupled weight decay, AMSGrad, maximize). Parameters that the optimizer does not own,
    or whose gradient is ``None``, stay where they are, as in ``optimizer.step()``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter]) -> None:
        if type(optimizer) not in SUPPORTED:
            names = ", ".join(f"torch.optim.{c.__name__}" for c in SUPPORTED)
            raise TypeError(
                f"the look-ahead cannot emulate {type(optimizer).__name__}; supported optimizers: {names}"
            )
        self.optimizer = optimizer
        self.params = dict(params)
        self._group: dict[int, dict[str, Any]] = {
            id(p): group for group in optimizer.param_groups for p in group["params"]
        }

    def step(self, grads: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
        """θ' = what ``optimizer.step()`` would make of θ with gradient ``grads``."""
        out = {}
        for name, p in self.params.items():
            g, group = grads.get(name), self._group.get(id(p))
            if g is None or group is None:
                out[name] = p.detach()
            elif isinstance(self.optimizer, torch.optim.SGD):
                out[name] = _sgd(p.detach(), g, group, self.optimizer.state.get(p, {}))
            else:
                out[name] = _adam(p.detach(), g, group, self.optimizer.state.get(p, {}))
        return out

    def jacobian_diagonal(self, grads: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
        """diag(∂θ'/∂g) at ``grads``: exact because every supported update is elementwise
        (0 for a parameter that the optimizer does not own: it does not move)."""
        unowned = [n for n in self.params if grads.get(n) is not None and id(self.params[n]) not in self._group]
        names = [n for n in self.params if grads.get(n) is not None and n not in unowned]
        if not names:
            return {n: torch.zeros_like(grads[n]) for n in unowned}  # type: ignore[arg-type]
        with torch.enable_grad():
            leaves = {n: grads[n].detach().requires_grad_() for n in names}  # type: ignore[union-attr]
            moved = self.step(leaves)
            diag = torch.autograd.grad(
                [moved[n] for n in names],
                [leaves[n] for n in names],
                [torch.ones_like(leaves[n]) for n in names],
                allow_unused=True,
            )
        out = {n: torch.zeros_like(leaves[n]) if d is None else d for n, d in zip(names, diag)}
        return {**out, **{n: torch.zeros_like(grads[n]) for n in unowned}}  # type: ignore[arg-type]


def learning_rates(optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter]) -> dict[str, float]:
    """The current learning rate of every parameter in ``params`` that ``optimizer`` owns."""
    rate = {id(p): float(group["lr"]) for group in optimizer.param_groups for p in group["params"]}
    return {n: rate[id(p)] for n, p in params.items() if id(p) in rate}


def _sgd(p: Tensor, g: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
    """torch.optim.SGD: d = g + wd·θ; b = μ·b + (1−τ)·d (b = d at first); θ' = θ − lr·(d + μ·b if Nesterov else b)."""
    if group.get("maximize", False):
        g = -g
    if group["weight_decay"] != 0:
        g = g + group["weight_decay"] * p
    momentum = group["momentum"]
    if momentum != 0:
        buf = state.get("momentum_buffer")
        buf = g if buf is None else momentum * buf + (1 - group["dampening"]) * g
        g = g + momentum * buf if group["nesterov"] else buf
    return p - group["lr"] * g


def _adam(p: Tensor, g: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
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
