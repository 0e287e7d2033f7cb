"""The Split multi-task network: a shared dilated ResNet-50 and one DeepLabv3 head per task."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from torch import Tensor, nn

from dynamtl.models.deeplab import ASPPHead
from dynamtl.models.resnet import DilatedResNet50


class SplitNet(nn.Module):
    """Hard parameter sharing for dense prediction, the "Split" network of the MTAN and
    Auto-Lambda papers in its ResNet form: every task reads the same encoder features.

    Encoder: :class:`~dynamtl.models.resnet.DilatedResNet50` (output stride 8). Heads: one
    :class:`~dynamtl.models.deeplab.ASPPHead` per task (rates 12, 24, 36; ``4·width``
    channels, 256 at the paper's width), whose prediction is upsampled to the input size;
    the heads named in ``unit_heads`` are L2-normalised over channels (surface normals).
    Trained from scratch.

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
        self.heads = nn.ModuleDict(
            {
                task: ASPPHead(self.encoder.channels[-1], out, channels=4 * width, unit=task in unit_heads)
                for task, out in heads.items()
            }
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.encoder(x)
        return {task: head(features, x.shape[-2:]) for task, head in self.heads.items()}


def check_heads(heads: Mapping[str, int], unit_heads: Collection[str]) -> None:
    """``ValueError`` for no heads, a width below 1, or a unit head that is not a head."""
    if not heads:
        raise ValueError("a dense multi-task network needs at least one head: {'seg': 13, 'depth': 1, ...}")
    narrow = {task: out for task, out in heads.items() if out < 1}
    if narrow:
        raise ValueError(f"head widths must be >= 1, got {narrow}")
    unknown = [task for task in unit_heads if task not in heads]
    if unknown:
        raise ValueError(f"unit_heads {unknown} are not among the heads {list(heads)}")
