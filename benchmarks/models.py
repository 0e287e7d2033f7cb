"""The two models of the step-cost benchmarks, with random batches of the right shapes.

(a) an MLP 128-256-256 with 3 heads, batch 256; (b) a 4-conv CNN (32/64 channels) on
28x28 with 3 heads, batch 64. Each head is a 10-way classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dynamtl as dm

TASKS = ("a", "b", "c")


class Heads(nn.Module):
    """A shared trunk and one linear 10-way head per task."""

    def __init__(self, trunk: nn.Module, width: int, tasks: tuple[str, ...] = TASKS) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict({t: nn.Linear(width, 10) for t in tasks})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {t: head(h) for t, head in self.heads.items()}


def mlp() -> nn.Module:
    return Heads(nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()), 256)


def cnn() -> nn.Module:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    trunk = nn.Sequential(
        *block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
    )
    return Heads(trunk, 128)


def batch(kind: str, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """A random batch for model ``kind`` ("mlp": 256 x 128; "cnn": 64 x 1 x 28 x 28)."""
    shape = (256, 128) if kind == "mlp" else (64, 1, 28, 28)
    x = torch.randn(*shape, generator=generator)
    return x, {t: torch.randint(0, 10, (shape[0],), generator=generator) for t in TASKS}


def tasks() -> dm.Tasks:
    return dm.Tasks(dict.fromkeys(TASKS, F.cross_entropy))


MODELS = {"mlp": mlp, "cnn": cnn}
