"""MTAN: task-specific soft-attention modules over a shared dilated ResNet-50."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import cast

import torch
from torch import Tensor, nn

from dynamtl.models.deeplab import ASPPHead
from dynamtl.models.resnet import DilatedResNet50
from dynamtl.models.split import check_heads


class MTAN(nn.Module):
    r"""Multi-Task Attention Network (Liu, Johns & Davison, *End-to-End Multi-Task Learning
    with Attention*, CVPR 2019) on a dilated ResNet-50, as in the ResNet experiments of
    Auto-Lambda: one shared encoder, and per task a soft-attention module on each of its
    four stages that selects the task's features from the shared ones.

    Following MTAN's Section 3.2 (written there for SegNet blocks), at stage j with shared
    features u_j (the input of the stage's last bottleneck) and p_j (the stage's output,
    C_j channels), task t's attended features are

        â_j = h_j(g_j([u_j ; f_j(â_{j−1})])) ⊙ p_j,      â_1 = h_1(g_1(u_1)) ⊙ p_1,

    with, for each task, g_j = ``conv 1×1 (C_j/4) → BN → ReLU`` and h_j = ``conv 1×1 (C_j)
    → BN → sigmoid`` (the attention mask, in [0, 1] element-wise), and f_j, shared by the
    tasks, = ``conv 3×3 (C_j/4) → BN → ReLU``, followed by a 2×2 max-pool where stage j
    halves the resolution (stage 2 only, at output stride 8), which brings â_{j−1} to the
    shape of u_j. MTAN's SegNet modules keep the block's width inside g and f; the C_j/4
    bottleneck here is our choice, matching the bottleneck width of the ResNet stage it
    attends (without it, stage 4's g and h would hold 12.6 M parameters per task and f_4
    18.9 M).
    Each task's â_4 feeds its own :class:`~dynamtl.models.deeplab.ASPPHead`, upsampled to the
    input size; ``unit_heads`` are L2-normalised. Trained from scratch.

    ``model(x)`` with ``x`` of ``[N, 3, H, W]`` returns ``{task: [N, heads[task], H, W]}``.

    Args:
        heads: task -> output channels.
        unit_heads: the tasks whose outputs are unit vectors.
        width: the encoder's base width (64: ResNet-50; smaller only for quick tests).
    """

    def __init__(self, heads: Mapping[str, int], *, unit_heads: Collection[str] = (), width: int = 64) -> None:
        super().__init__()
        check_heads(heads, unit_heads)
        self.encoder = DilatedResNet50(width)
        channels, strides = self.encoder.channels, self.encoder.strides
        self.bridges = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels[j - 1], channels[j] // 4, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels[j] // 4),
                nn.ReLU(inplace=True),
                *([nn.MaxPool2d(2, ceil_mode=True)] if strides[j] == 2 else []),
            )
            for j in range(1, len(channels))
        )
        inputs = [channels[0]] + [c + c // 4 for c in channels[1:]]
        self.attention = nn.ModuleDict(
            {task: nn.ModuleList(_mask(i, c) for i, c in zip(inputs, channels)) for task in heads}
        )
        self.heads = nn.ModuleDict(
            {
                task: ASPPHead(channels[-1], out, channels=4 * width, unit=task in unit_heads)
                for task, out in heads.items()
            }
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.encoder.stem(x)
        attended: dict[str, Tensor] = {}
        for j, module in enumerate(self.encoder.stages):
            stage = cast(nn.Sequential, module)  # the encoder's stages are nn.Sequential blocks
            u = stage[:-1](h)
            h = stage[-1](u)
            for task, module in self.attention.items():
                masks = cast(nn.ModuleList, module)
                inputs = u if j == 0 else torch.cat([u, self.bridges[j - 1](attended[task])], dim=1)
                attended[task] = masks[j](inputs) * h
        return {task: head(attended[task], x.shape[-2:]) for task, head in self.heads.items()}


def _mask(in_channels: int, channels: int) -> nn.Sequential:
    """g then h: ``conv 1×1 (C/4) → BN → ReLU → conv 1×1 (C) → BN → sigmoid``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels // 4, 1, bias=False),
        nn.BatchNorm2d(channels // 4),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels // 4, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.Sigmoid(),
    )
