"""GradVac: pull pairwise gradient similarities up to their running targets (Wang et al., 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from dynamtl._helpers import intervals
from dynamtl.aggregation._solvers import SeededGenerator, check_jacobian, combine_rows, gramian, random_orders
from dynamtl.aggregation.base import GradientAggregation, fitted_row_weights
from dynamtl.facts import aggregation_facts

Granularity = Literal["model", "layer"]


class GradVac(GradientAggregation):
    r"""Gradient Vaccine: set the cosine of each pair of gradients to at least its target.

    For every task i, starting from gᵢ' = gᵢ, the other tasks j are visited in a random
    order. With φᵢⱼ = cos(gᵢ', gⱼ) and the target φ̂ᵢⱼ, if φᵢⱼ < φ̂ᵢⱼ then

    .. math::

        g_i' \leftarrow g_i' + \frac{\lVert g_i' \rVert \big(\hat\phi_{ij}\sqrt{1-\phi_{ij}^2}
        - \phi_{ij}\sqrt{1-\hat\phi_{ij}^2}\big)}{\lVert g_j \rVert \sqrt{1-\hat\phi_{ij}^2}}\; g_j ,

    which makes cos(gᵢ', gⱼ) = φ̂ᵢⱼ exactly; then the target follows the observed similarity,
    φ̂ᵢⱼ ← (1 − β) φ̂ᵢⱼ + β φᵢⱼ (targets start at 0). d = Σᵢ gᵢ'. From *Gradient Vaccine:
    Investigating and Improving Multi-task Optimization in Massively Multilingual Models*
    (Wang, Tsvetkov, Firat, Cao, ICLR 2021), Algorithm 1. With targets 0 the rule is
    PCGrad's; when every cosine is at or above its target, d = Σᵢ gᵢ. All of it runs on the
    T × T Gram matrix.

    Weighted rows: the rows are λₖ ∇Lₖ. Cosines, and so the targets and which pairs are
    corrected, do not depend on λ > 0; a correction adds a multiple of gⱼ sized by ‖gᵢ'‖, so
    λᵢ scales task i's whole contribution, and with no correction d is the gradient of
    Σ λₖ Lₖ (:class:`Sum`).

    Args:
        beta: the EMA rate β of the targets (the paper's 1e-2).
        seed: seed of the generator of the random task orders.
        granularity: ``"model"`` (default): one rule and one T × T table of targets over
            all shared parameters; ``"layer"``: the rule and the targets per layer (the
            shared parameters of one module, e.g. a weight and its bias), with the same task
            orders in every layer, the paper's finer granularity. Per layer the update is no
            longer one combination of the rows; ``last_weights`` are then the least-squares
            weights of the whole update. Layers are known from the parameter names when
            :class:`~dynamtl.MultiTask` calls it; :meth:`combine` on a bare matrix is always
            the whole-model rule.

    The targets φ̂ (T × T tensors, one per layer with ``"layer"``) and the generator's state
    are saved in the state dict.
    Pairs where a gradient is zero have no cosine and are skipped (target unchanged); a
    target of exactly 1 cannot be reached by a finite correction and is not enforced.

    Differences to the paper: it also offers granularities by parameter group inside a
    layer and by language-specific blocks; here the whole model (default) or each layer.

    >>> import torch
    >>> GradVac().combine(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    tensor([2., 1.])
    """

    facts = aggregation_facts(
        "gradvac", "GradVac", "Wang et al., Gradient Vaccine, ICLR 2021", options=("beta", "granularity"),
        context={"seed": "seed"},
    )

    option_ranges = intervals(beta="[0, 1]", seed="[0, inf)")

    def __init__(self, beta: float = 0.01, seed: int = 0, granularity: Granularity = "model") -> None:
        super().__init__()
        self.beta = beta
        self.granularity = granularity
        self.generator = SeededGenerator(seed)
        self.targets: list[list[float]] | None = None
        self.layer_targets: dict[str, list[list[float]]] = {}

    @property
    def by_layer(self) -> bool:
        return self.granularity == "layer"

    def combine(self, jacobian: Tensor) -> Tensor:
        check_jacobian(type(self).__name__, jacobian)
        orders = random_orders(self.generator, len(jacobian))
        if self.targets is None or len(self.targets) != len(jacobian):
            self.targets = [[0.0] * len(jacobian) for _ in range(len(jacobian))]
        return combine_rows(self._vaccinate(jacobian, orders, self.targets), jacobian)

    def combine_shared(self, jacobian: Tensor, blocks: Sequence[tuple[str, int]]) -> tuple[Tensor, Tensor]:
        if self.granularity == "model":
            return super().combine_shared(jacobian, blocks)
        check_jacobian(type(self).__name__, jacobian)
        num = len(jacobian)
        orders = random_orders(self.generator, num)
        layers: dict[str, int] = {}
        for name, size in blocks:  # consecutive parameters of one module form a layer
            layer = name.rpartition(".")[0]
            layers[layer] = layers.get(layer, 0) + size
        pieces = []
        for layer, part in zip(layers, jacobian.split(list(layers.values()), dim=1)):
            targets = self.layer_targets.get(layer)
            if targets is None or len(targets) != num:
                targets = self.layer_targets[layer] = [[0.0] * num for _ in range(num)]
            pieces.append(combine_rows(self._vaccinate(part, orders, targets), part))
        update = torch.cat(pieces)
        return fitted_row_weights(jacobian, update), update

    def _vaccinate(self, jacobian: Tensor, orders: list[list[int]], targets: list[list[float]]) -> list[float]:
        """The row weights of the corrected gradients Σᵢ gᵢ' on ``jacobian`` with the task
        orders ``orders``, updating ``targets`` (T × T) in place."""
        gram = gramian(jacobian).tolist()
        num = len(gram)
        weights = [0.0] * num
        for i, order in enumerate(orders):
            coefficients = [0.0] * num
            coefficients[i] = 1.0
            products = list(gram[i])  # gᵢ' · gₖ for every k
            norm2 = gram[i][i]  # ‖gᵢ'‖²
            for j in order:
                if norm2 <= 0.0 or gram[j][j] <= 0.0:
                    continue
                norm_i, norm_j = math.sqrt(norm2), math.sqrt(gram[j][j])
                phi = max(-1.0, min(1.0, products[j] / (norm_i * norm_j)))
                target = targets[i][j]
                room = math.sqrt(max(1.0 - target * target, 0.0))
                if phi < target and room > 0.0:
                    shift = norm_i * (target * math.sqrt(1.0 - phi * phi) - phi * room) / (norm_j * room)
                    coefficients[j] += shift
                    norm2 += 2.0 * shift * products[j] + shift * shift * gram[j][j]
                    products = [p + shift * q for p, q in zip(products, gram[j])]
                targets[i][j] = (1.0 - self.beta) * target + self.beta * phi
            weights = [w + c for w, c in zip(weights, coefficients)]
        return weights

    def get_extra_state(self) -> dict[str, Any]:
        targets = None if self.targets is None else torch.tensor(self.targets, dtype=torch.float64)
        layers = {name: torch.tensor(t, dtype=torch.float64) for name, t in self.layer_targets.items()}
        return {"targets": targets, "layer_targets": layers, "generator": self.generator.state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.targets = None if state["targets"] is None else state["targets"].double().tolist()
        self.layer_targets = {name: t.double().tolist() for name, t in state.get("layer_targets", {}).items()}
        self.generator.load(state["generator"])
