"""RelevanceDrift: a synthetic auxiliary task whose usefulness drifts over training time."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamtl.benchmarks.base import Benchmark, MultiTaskTensors, Splits, TaskSpec, TrainingDefaults
from dynamtl.data._files import seeded_generators
from dynamtl.metrics import MAE

SPLITS = ("train", "val", "test")


class RelevanceDrift(Benchmark):
    r"""A regression task and an auxiliary task that helps it on some samples and hurts it
    on others, with the share of helpful samples drifting over the training stream.

    Built for the claim of HydaLearn (Verboven et al., 2020): the usefulness of an
    auxiliary task changes during training and differs between mini-batches, so a
    weighting that reacts per mini-batch should give the auxiliary task a high weight on
    batches where it helps and a low one where it hurts. The data are synthetic (no
    licence, nothing is read from or written to ``root``), generated exactly as follows
    from ``seed``:

    * two unit directions in ℝᵈ (d = ``features``): w, drawn uniformly, and
      u = c·w + √(1 − c²)·w⊥ with c = ``harmful_cosine`` and w⊥ a uniform unit vector
      orthogonal to w;
    * inputs xᵢ ~ N(0, I_d);
    * main target yᵢ = w·xᵢ + σ_m εᵢ (σ_m = ``main_noise``);
    * a hidden regime hᵢ ∈ {helpful, harmful} per sample, and the auxiliary target
      aᵢ = w·xᵢ + σ_a ηᵢ when helpful (the main direction, σ_a = ``aux_noise``) and
      aᵢ = u·xᵢ + σ_a ηᵢ when harmful; ε, η ~ N(0, 1).

    **Drift.** The training split is a stream in time order: sample i of n has time
    tᵢ = i / n and is helpful with probability p(tᵢ) = (1 + cos 2π k tᵢ) / 2
    (k = ``cycles``; :meth:`helpful_share`), independently of the others, so the helpful
    share starts at 1, falls to 0 at t = 1/(2k) and comes back, and consecutive
    mini-batches differ by chance around p(t). **A trainer must iterate the training split
    in order, without shuffling** (``defaults.extra["shuffle"] == 0``): each epoch replays
    the stream. Validation and test samples are helpful with probability ½, independently.
    :meth:`helpful` gives the true regime of every sample.

    **Clean evaluation** (``clean_eval=True``): the validation and test ``"main"`` targets
    are w·xᵢ without the label noise (the training labels keep it), so the metric measures
    how well the main function was learnt rather than the label noise, which otherwise
    dominates it (at the defaults the main task alone reaches its noise floor
    E|σ_m ε| ≈ 0.8 σ_m). With a noisy, short main stream (e.g. ``features=32``,
    ``train_size=1024``, ``main_noise=3``) the clean auxiliary labels of the helpful samples
    carry the main direction that the noisy main labels give only slowly: a static auxiliary
    weight > 0 beats weight 0, and a weight that follows p(t) beats every static one
    (``docs/claims.md``, HydaLearn on a drift where the auxiliary task is needed).

    **Tasks**: ``"main"`` and ``"aux"``, mean-squared error on ``float32 [N, 1]`` targets,
    metric mean absolute error; ``primary = ("main",)``. **Inputs** ``float32 [N, d]``.
    ``limit`` draws a training stream of ``limit`` samples covering the same cycles.

    **Model** (:meth:`model`): an MLP trunk ``linear d→32 → tanh → linear 32→32 → tanh``
    and one linear head 32→width per task. **Defaults**: Adam, learning rate 1e-3,
    batch 64, 10 epochs (128 steps, well under a second an epoch on 2 CPU cores), no shuffling.

    Args:
        features: d, the input dimension (≥ 2).
        train_size, val_size, test_size: samples per split.
        cycles: k, the number of cosine cycles of the helpful share over the stream.
        harmful_cosine: c, the cosine between the harmful direction u and w, in [−1, 1)
            (0, the default: the harmful target asks the shared trunk for a feature the main
            task does not use; −1: it opposes the main target).
        main_noise, aux_noise: σ_m and σ_a.
        clean_eval: the validation and test main targets without noise (w·x).
    """

    name = "drift"
    description = "synthetic regression with an auxiliary task whose helpfulness drifts along the training stream"
    specs = {  # noqa: RUF012 - Benchmark.specs is per instance (wrappers set their own); never mutated
        "main": TaskSpec(F.mse_loss, (MAE,), 1),
        "aux": TaskSpec(F.mse_loss, (MAE,), 1),
    }
    primary = ("main",)
    defaults = TrainingDefaults(epochs=10, batch_size=64, lr=1e-3, optimizer="adam", extra={"shuffle": 0.0})
    representation = "trunk"

    def __init__(
        self,
        *,
        features: int = 16,
        train_size: int = 8192,
        val_size: int = 2048,
        test_size: int = 4096,
        cycles: float = 1.0,
        harmful_cosine: float = 0.0,
        main_noise: float = 0.5,
        aux_noise: float = 0.1,
        clean_eval: bool = False,
    ) -> None:
        if features < 2:
            raise ValueError(f"features must be >= 2 (w and an orthogonal direction), got {features}")
        for label, size in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if size < 1:
                raise ValueError(f"{label} must be >= 1, got {size}")
        if cycles <= 0:
            raise ValueError(f"cycles must be > 0, got {cycles}")
        if not -1.0 <= harmful_cosine < 1.0:
            raise ValueError(
                f"harmful_cosine must lie in [-1, 1) (at 1 the harmful regime would equal the helpful one), "
                f"got {harmful_cosine}"
            )
        if main_noise < 0 or aux_noise < 0:
            raise ValueError(f"noise levels must be >= 0, got main_noise={main_noise}, aux_noise={aux_noise}")
        self.features, self.cycles, self.harmful_cosine = features, cycles, harmful_cosine
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.main_noise, self.aux_noise, self.clean_eval = main_noise, aux_noise, clean_eval

    def helpful_share(self, t: Tensor) -> Tensor:
        """p(t) = (1 + cos 2π k t) / 2, the probability that a training sample at time
        ``t`` ∈ [0, 1] is helpful."""
        return (1.0 + torch.cos(2.0 * math.pi * self.cycles * t)) / 2.0

    def splits(self, root: Path, seed: int, limit: int | None = None) -> Splits:
        data = self._generate(seed, limit)
        return Splits(
            **{split: MultiTaskTensors(x, {"main": main, "aux": aux}) for split, (x, main, aux, _) in data.items()}
        )

    def helpful(self, seed: int, split: str = "train", limit: int | None = None) -> Tensor:
        """The true regime of every sample of ``split`` (``bool [N]``, True = helpful), for
        the data of ``splits(root, seed, limit)``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return self._generate(seed, limit)[split][3]

    def model(self, heads: Mapping[str, int]) -> nn.Module:
        return _DriftMLP(self.features, heads)

    def _generate(self, seed: int, limit: int | None) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Split -> (inputs, main, aux, helpful); one random stream per split, so the
        validation and test data do not depend on ``limit``."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit caps the number of training samples and must be >= 1, got {limit}")
        directions, *streams = seeded_generators(seed, 1 + len(SPLITS))
        w = _unit(torch.randn(self.features, generator=directions))
        other = torch.randn(self.features, generator=directions)
        orthogonal = _unit(other - (other @ w) * w)
        c = self.harmful_cosine
        u = c * w + math.sqrt(1.0 - c * c) * orthogonal
        sizes = {**self.sizes, "train": self.sizes["train"] if limit is None else limit}
        out = {}
        for split, gen in zip(SPLITS, streams):
            n = sizes[split]
            x = torch.randn(n, self.features, generator=gen)
            share = self.helpful_share(torch.arange(n) / n) if split == "train" else torch.full((n,), 0.5)
            helpful = torch.rand(n, generator=gen) < share
            noise = self.main_noise * torch.randn(n, generator=gen)
            main = x @ w if self.clean_eval and split != "train" else x @ w + noise
            aux = torch.where(helpful, x @ w, x @ u) + self.aux_noise * torch.randn(n, generator=gen)
            out[split] = (x, main.unsqueeze(1), aux.unsqueeze(1), helpful)
        return out


def _unit(v: Tensor) -> Tensor:
    return v / v.norm()


class _DriftMLP(nn.Module):
    """The MLP trunk of :class:`RelevanceDrift` and one linear head per task."""

    def __init__(self, features: int, heads: Mapping[str, int]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("RelevanceDrift.model needs at least one head: model({'main': 1, 'aux': 1})")
        self.trunk = nn.Sequential(nn.Linear(features, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.heads = nn.ModuleDict({task: nn.Linear(32, width) for task, width in heads.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {task: head(h) for task, head in self.heads.items()}
