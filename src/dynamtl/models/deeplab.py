"""A DeepLabv3 head: atrous spatial pyramid pooling and a 1×1 classifier, upsampled to the input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ASPPHead(nn.Module):
    """The DeepLabv3 prediction head (Chen, Papandreou, Schroff & Adam, *Rethinking Atrous
    Convolution for Semantic Image Segmentation*, 2017, Section 3.3) for one task.

    Atrous spatial pyramid pooling on the encoder's features: five parallel branches of
    ``channels`` filters, each followed by batch norm and ReLU — a 1×1 convolution, three 3×3
    atrous convolutions of rates ``rates`` ((12, 24, 36): the paper's rates doubled for an
    output stride of 8), and image-level features (global average pooling → 1×1 convolution,
    upsampled bilinearly back to the feature size) — concatenated and fused by a 1×1
    convolution (``channels``, batch norm, ReLU), then a final 1×1 convolution to
    ``out_channels`` (with bias). The prediction is upsampled bilinearly to ``size`` (the
    input's); with ``unit=True`` it is L2-normalised over channels (surface normals).

    The image-level branch normalises one value per image and channel, so training needs
    at least 2 images per batch (as in every batch-norm implementation of DeepLabv3).

    Args:
        in_channels: channels of the encoder's features (2048 for ResNet-50).
        out_channels: the task's output channels (classes; 1 for depth; 3 for normals).
        rates: the atrous rates of the three 3×3 branches.
        channels: filters per branch (256 in the paper).
        unit: L2-normalise the output over channels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: Sequence[int] = (12, 24, 36),
        channels: int = 256,
        unit: bool = False,
    ) -> None:
        super().__init__()
        if out_channels < 1 or channels < 1:
            raise ValueError(f"out_channels and channels must be >= 1, got {out_channels} and {channels}")
        self.unit = unit
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, channels, 1)])
        self.branches.extend(_conv_bn_relu(in_channels, channels, 3, rate) for rate in rates)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(in_channels, channels, 1))
        self.fuse = _conv_bn_relu(channels * (len(self.branches) + 1), channels, 1)
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def forward(self, features: Tensor, size: Sequence[int]) -> Tensor:
        pooled = _resize(self.image_pool(features), features.shape[-2:])
        h = torch.cat([branch(features) for branch in self.branches] + [pooled], dim=1)
        out = _resize(self.classifier(self.fuse(h)), size)
        return F.normalize(out, dim=1) if self.unit else out


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )
