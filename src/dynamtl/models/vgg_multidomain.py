"""VGG-16 with task-specific batch normalisation, for multi-domain image classification."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from torch import Tensor, nn

# VGG-16, configuration D of Simonyan & Zisserman: five blocks of 3×3 convolutions (widths),
# each followed by a 2×2 max-pool. The widths are those of base width 64 (the paper's).
BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class MultiDomainVGG16(nn.Module):
    """The thirteen convolutional layers of VGG-16 (Simonyan & Zisserman, *Very Deep
    Convolutional Networks for Large-Scale Image Recognition*, ICLR 2015, configuration D)
    shared by all domains, with one set of batch norms and one classifier per domain: the
    multi-domain network of Auto-Lambda's CIFAR-100 experiments.

    Every 3×3 convolution (stride 1, padding 1, no bias) is followed by the *current
    domain's* ``BatchNorm2d`` (its own scale, shift and running statistics) and a ReLU;
    five 2×2 max-pools take a 32×32 image to a 512-vector (``8 * width`` values), which the
    domain's linear layer maps to its classes. VGG's three fully connected ImageNet layers (and their dropout)
    are replaced by that single linear layer, as usual for 32×32 inputs. Trained from
    scratch: He (fan-out) initialisation of the convolutions.

    ``model(x, task)`` with ``x`` of ``[N, 3, 32, 32]`` returns the logits ``[N, heads[task]]``
    of that domain (the multi-input convention of :class:`~dynamtl.Tasks`).

    Args:
        heads: domain (task) -> number of classes.
        width: the base width, the channels of the first block (64: the paper's VGG-16);
            every layer's channel count is scaled by ``width / 64`` (at least 1), so the
            last block has ``8 * width`` channels. Smaller for quick tests.
    """

    def __init__(self, heads: Mapping[str, int], *, width: int = 64) -> None:
        super().__init__()
        if not heads:
            raise ValueError("MultiDomainVGG16 needs at least one domain: {'people': 5, ...}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        narrow = {task: out for task, out in heads.items() if out < 1}
        if narrow:
            raise ValueError(f"head widths must be >= 1, got {narrow}")
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.pool_after: list[bool] = []
        in_channels = 3
        for block in BLOCKS:
            for k, paper_channels in enumerate(block):
                channels = max(1, paper_channels * width // 64)
                self.convs.append(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False))
                self.norms.append(nn.ModuleDict({task: nn.BatchNorm2d(channels) for task in heads}))
                self.pool_after.append(k == len(block) - 1)
                in_channels = channels
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.heads = nn.ModuleDict({task: nn.Linear(in_channels, out) for task, out in heads.items()})
        for conv in self.convs:
            nn.init.kaiming_normal_(cast(nn.Conv2d, conv).weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor, task: str) -> Tensor:
        if task not in self.heads:
            raise KeyError(f"unknown domain {task!r}: the model has {list(self.heads)}")
        h = x
        for conv, norms, pool in zip(self.convs, self.norms, self.pool_after):
            h = self.relu(cast(nn.ModuleDict, norms)[task](conv(h)))
            if pool:
                h = self.pool(h)
        return self.heads[task](h.flatten(1))
