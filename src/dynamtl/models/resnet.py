"""The dilated ResNet-50 encoder (output stride 8) of the dense multi-task networks."""

from __future__ import annotations

from torch import Tensor, nn

LAYERS = (3, 4, 6, 3)
EXPANSION = 4


class DilatedResNet50(nn.Module):
    """ResNet-50 (He, Zhang, Ren & Sun, *Deep Residual Learning for Image Recognition*, CVPR
    2016) without its classifier, made dense with atrous convolution as in DeepLabv3 (Chen,
    Papandreou, Schroff & Adam, 2017) for an output stride of 8.

    Layout (He et al.'s Table 1, 50-layer column): a stem ``conv 7×7/2 (w) → BN → ReLU →
    max-pool 3×3/2``, then four stages of 3, 4, 6, 3 bottleneck blocks ``conv 1×1 (m) → BN →
    ReLU → conv 3×3 (m) → BN → ReLU → conv 1×1 (4m) → BN``, added to the block's input
    (through a ``conv 1×1 → BN`` projection where the shape changes) and passed through a
    ReLU, with m = w, 2w, 4w, 8w (w = ``width``, 64 in the paper: 256, 512, 1024, 2048 output
    channels). Stage 2 halves the resolution (stride 2 on its first 3×3 convolution, the
    common "v1.5" placement); stages 3 and 4 keep it and use atrous 3×3 convolutions of rate
    2 and 4 instead of stride 2, which keeps their receptive fields (DeepLabv3, Section 3.1).
    A ``[N, 3, H, W]`` input gives ``[N, 32w, ⌈H/8⌉, ⌈W/8⌉]`` features. Trained from scratch:
    convolutions use He (fan-out) initialisation, batch norms start at γ = 1, β = 0.

    ``stem`` and ``stages`` (an ``nn.ModuleList`` of ``nn.Sequential`` blocks) are public so
    that MTAN can read the features inside every stage; ``channels[j]`` and ``strides[j]``
    are stage j's output channels and its resolution change.

    Args:
        width: w, the stem's channel count (64 for ResNet-50; smaller for quick tests).
    """

    strides: tuple[int, ...] = (1, 2, 1, 1)
    dilations: tuple[int, ...] = (1, 1, 2, 4)

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.channels = tuple(EXPANSION * width * 2**j for j in range(len(LAYERS)))
        stages = []
        in_channels = width
        for j, blocks in enumerate(LAYERS):
            middle = width * 2**j
            stage = [_Bottleneck(in_channels, middle, self.strides[j], self.dilations[j])]
            stage += [_Bottleneck(self.channels[j], middle, 1, self.dilations[j]) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_channels = self.channels[j]
        self.stages = nn.ModuleList(stages)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
        return h


class _Bottleneck(nn.Module):
    """``1×1 (m) → 3×3 (m, stride, dilation) → 1×1 (4m)`` with batch norms and a shortcut."""

    def __init__(self, in_channels: int, middle: int, stride: int, dilation: int) -> None:
        super().__init__()
        out_channels = EXPANSION * middle
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, middle, 1, bias=False),
            nn.BatchNorm2d(middle),
            nn.ReLU(inplace=True),
            nn.Conv2d(middle, middle, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(middle),
            nn.ReLU(inplace=True),
            nn.Conv2d(middle, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))
