"""Geometric training augmentation of an image and its dense targets, applied identically
to all of them, and the fixed random maps of the noise auxiliary task."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

TargetKind = Literal["plain", "depth", "disparity", "normal"]
KINDS: tuple[str, ...] = get_args(TargetKind)


def nearest_indices(source: int, size: int, start: int = 0, window: int | None = None) -> Tensor:
    """The source indices, along one axis, that nearest-neighbour resampling of the
    ``window`` pixels from ``start`` (default: the whole axis of length ``source``) to
    ``size`` pixels reads: output pixel i takes ``start + ⌊(i + ½)·window / size⌋``, the
    source pixel under its centre (the convention of Pillow's ``NEAREST``)."""
    window = source if window is None else window
    if start < 0 or window < 1 or start + window > source or size < 1:
        raise ValueError(f"cannot resample {window} pixels from {start} of an axis of {source} to {size}")
    return start + torch.div((2 * torch.arange(size) + 1) * window, 2 * size, rounding_mode="floor")


def noise_map(seed: int, split: int, index: int, height: int, width: int) -> Tensor:
    """The noise task's target of sample ``index`` of split ``split`` (0 training folder,
    1 the other): ``float32 [1, height, width]`` drawn uniformly from (0, 1] (every pixel a
    valid, positive target) by a generator seeded with a SHA-256 digest of the three
    integers, so a sample keeps the same map in every epoch and run with the same ``seed``
    and maps of different samples, splits or seeds are independent."""
    digest = hashlib.sha256(f"noise/{seed}/{split}/{index}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return 1.0 - torch.rand(1, height, width, generator=generator)


class DenseAugmentation:
    r"""Random scale-and-crop, then random horizontal flip, of an image and its dense targets.

    The random crop with rescaling of MTAN and Auto-Lambda's training setup, written from
    its description: draw a scale s from ``scales`` and a window of
    ``(round(h_out / s), round(w_out / s))`` pixels at a uniformly random position of the
    input, where ``(h_out, w_out)`` is ``crop`` (default: the input size); resize the window
    to ``(h_out, w_out)``, the image bilinearly and every target by nearest neighbour (so
    labels stay labels and invalid zeros stay invalid, see :func:`nearest_indices`). Zooming
    in by s brings the scene s times closer, so depth targets are divided by s and
    disparity targets multiplied by s. Then, with probability ``flip``, mirror everything
    left-right; a surface normal's x component (channel 0, pointing right in the image)
    changes sign.

    With ``scales=(1.0,)`` and a ``crop`` smaller than the input this is a plain random
    crop (CityScapes' 256×256 crops of 256×512 images).

    Args:
        kinds: task -> how its target transforms: ``"plain"`` (labels, the noise map: only
            moved), ``"depth"`` (÷ s), ``"disparity"`` (× s), ``"normal"`` (x negated on flip).
        scales: the scales drawn from, uniformly; each ≥ 1 so the window fits the input
            when ``crop`` is the input size.
        crop: ``(height, width)`` of the output, or ``None`` for the input size.
        flip: probability of the horizontal flip.

    Shapes: the image is ``[C, H, W]``; a target is ``[H, W]`` or ``[K, H, W]``, of any
    dtype. Randomness comes from ``generator`` (default: torch's global generator, which
    ``DataLoader`` seeds per worker).
    """

    def __init__(
        self,
        kinds: Mapping[str, TargetKind],
        scales: Sequence[float] = (1.0,),
        crop: tuple[int, int] | None = None,
        flip: float = 0.5,
    ) -> None:
        unknown = {task: kind for task, kind in kinds.items() if kind not in KINDS}
        if unknown:
            raise ValueError(f"unknown target kinds {unknown}: each is one of {list(KINDS)}")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive, got {list(scales)}")
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"flip is a probability, got {flip}")
        if crop is not None and (crop[0] < 1 or crop[1] < 1):
            raise ValueError(f"crop is a positive (height, width), got {crop}")
        self.kinds, self.scales, self.crop, self.flip = dict(kinds), tuple(scales), crop, flip

    def __call__(
        self, image: Tensor, targets: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        missing = [task for task in targets if task not in self.kinds]
        if missing:
            raise KeyError(f"no target kind for task(s) {missing}: known {list(self.kinds)}")
        height, width = image.shape[-2:]
        out_h, out_w = self.crop if self.crop is not None else (height, width)
        scale = self.scales[int(torch.randint(len(self.scales), (1,), generator=generator))]
        win_h, win_w = round(out_h / scale), round(out_w / scale)
        if win_h > height or win_w > width:
            raise ValueError(
                f"a {out_h}x{out_w} crop at scale {scale} needs a {win_h}x{win_w} window, larger than the "
                f"{height}x{width} input"
            )
        top = int(torch.randint(height - win_h + 1, (1,), generator=generator))
        left = int(torch.randint(width - win_w + 1, (1,), generator=generator))
        flipped = bool(torch.rand((), generator=generator) < self.flip)

        window = image[..., top : top + win_h, left : left + win_w]
        if (win_h, win_w) != (out_h, out_w):
            window = F.interpolate(window[None].float(), size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
        rows = nearest_indices(height, out_h, top, win_h)
        cols = nearest_indices(width, out_w, left, win_w)
        moved = {task: target[..., rows[:, None], cols[None, :]] for task, target in targets.items()}
        for task, target in moved.items():
            if self.kinds[task] == "depth":
                moved[task] = target / scale
            elif self.kinds[task] == "disparity":
                moved[task] = target * scale
        if flipped:
            window = window.flip(-1)
            for task, target in moved.items():
                target = target.flip(-1)
                if self.kinds[task] == "normal":
                    target = torch.cat([-target[:1], target[1:]])
                moved[task] = target
        return window, moved
