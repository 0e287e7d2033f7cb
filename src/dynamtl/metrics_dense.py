"""Losses and split-level streaming metrics of dense (per-pixel) predictions: semantic
segmentation, depth or disparity, surface normals.

Conventions shared by the dense benchmarks (NYUv2, CityScapes):

* segmentation targets are ``int64 [N, H, W]`` class indices with :data:`IGNORE_INDEX`
  (−1) on unlabelled pixels; predictions are logits ``[N, C, H, W]``;
* depth and disparity targets are ``float [N, 1, H, W]`` with 0 on pixels without a
  measurement; a pixel is valid where the target is > 0;
* normal targets are ``float [N, 3, H, W]`` unit vectors, all-zero where unknown; a pixel
  is valid where the target is not the zero vector.

Every metric here is a :class:`~dynamtl.metrics.Metric` with a ``streaming`` state that
accumulates over the whole split, so a split's value does not depend on how it is batched,
unlike the per-batch averages of some reference code: torchmetrics' for mIoU, pixel
accuracy and the depth errors (synchronised over processes with ``start(sync=True)``), a
histogram of angles for the normals, which torchmetrics lacks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dynamtl.metrics import Metric, TorchMetric

IGNORE_INDEX = -1
ANGLE_BIN = 0.01  # degrees: width of the histogram bins behind the median angle
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)

AngleStatistic = Literal["mean", "median", "within"]


def segmentation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Pixel-wise cross-entropy averaged over the labelled pixels (``labels != -1``); 0 (with
    a graph) when a batch has no labelled pixel, where ``F.cross_entropy`` would give NaN."""
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def valid_l1_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """Mean |prediction − target| over the pixels with a measurement (``target > 0``), the
    depth and disparity loss; 0 (with a graph) when there is none."""
    valid = targets > 0
    if not bool(valid.any()):
        return predictions.sum() * 0.0
    return (predictions - targets).abs()[valid].mean()


def normal_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """1 − cos(prediction, target) averaged over the pixels with a known normal (target not
    the zero vector); predictions are L2-normalised over channels first."""
    valid = targets.abs().sum(dim=1) > 0
    if not bool(valid.any()):
        return predictions.sum() * 0.0
    cosine = (F.normalize(predictions, dim=1) * targets).sum(dim=1)
    return 1.0 - cosine[valid].mean()


def segmentation_metrics(num_classes: int) -> tuple[Metric, Metric]:
    r"""``(miou, pixel_accuracy)`` of a ``num_classes``-way segmentation over the labelled
    pixels of the whole split, from the arg-max of the logits, by torchmetrics:

    * mIoU (``MulticlassJaccardIndex``, macro) = mean over classes c of |ŷ = c ∧ y = c| /
      |ŷ = c ∨ y = c|, over the classes present in the targets or the predictions of the
      split (a class absent from both has no defined IoU and is left out);
    * pixel accuracy (micro ``MulticlassAccuracy``) = share of labelled pixels predicted right.

    >>> miou, accuracy = segmentation_metrics(2)
    >>> state = miou.start()
    >>> state.update(torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]]), torch.tensor([[[0, 0]]]))
    >>> round(state.compute(), 4)  # class 0: IoU 1/2, class 1: IoU 0/1
    0.25
    """
    if num_classes < 2:
        raise ValueError(f"a segmentation has at least 2 classes, got {num_classes}")
    prepare = functools.partial(_labelled_pixels, num_classes)
    empty = "the split has no labelled pixel"
    return (
        Metric(
            "miou", None, True,
            streaming=functools.partial(TorchMetric, functools.partial(_jaccard, num_classes), prepare, empty),
        ),
        Metric(
            "pixel_accuracy", None, True,
            streaming=functools.partial(TorchMetric, functools.partial(_pixel_accuracy, num_classes), prepare, empty),
        ),
    )


def _jaccard(num_classes: int, predictions: Tensor) -> Any:
    from torchmetrics.classification import MulticlassJaccardIndex

    return MulticlassJaccardIndex(num_classes=num_classes, average="macro")


def _pixel_accuracy(num_classes: int, predictions: Tensor) -> Any:
    from torchmetrics.classification import MulticlassAccuracy

    return MulticlassAccuracy(num_classes=num_classes, average="micro")


def _labelled_pixels(num_classes: int, predictions: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The arg-max class and the label of every labelled pixel (flat); ``ValueError`` for
    logits of the wrong shape or labels out of range."""
    if predictions.dim() != 4 or predictions.shape[1] != num_classes:
        raise ValueError(f"segmentation predictions are logits [N, {num_classes}, H, W], got {list(predictions.shape)}")
    targets = targets.flatten().long()
    valid = targets != IGNORE_INDEX
    targets = targets[valid]
    if bool(((targets < 0) | (targets >= num_classes)).any()):
        raise ValueError(f"segmentation targets hold labels outside 0..{num_classes - 1} and {IGNORE_INDEX} (ignored)")
    return predictions.argmax(dim=1).flatten()[valid], targets


def error_metrics() -> tuple[Metric, Metric]:
    r"""``(abs_error, rel_error)`` of a depth or disparity map over the valid pixels P
    (target > 0) of the whole split, in float64, by torchmetrics: Σ_P |ŷ − y| / |P|
    (``MeanAbsoluteError``) and Σ_P |ŷ − y| / y / |P| (``MeanAbsolutePercentageError``,
    which divides by max(y, 1.17e-6): the same for any depth above a micrometre).

    >>> absolute, relative = error_metrics()
    >>> state = relative.start()
    >>> state.update(torch.tensor([[[[1.0, 3.0, 9.0]]]]), torch.tensor([[[[2.0, 2.0, 0.0]]]]))
    >>> state.compute()
    0.5
    """
    empty = "the split has no pixel with a measurement (target > 0)"
    return (
        Metric(
            "abs_error", None, False,
            streaming=functools.partial(TorchMetric, _float64("MeanAbsoluteError"), _valid_depths, empty),
        ),
        Metric(
            "rel_error", None, False,
            streaming=functools.partial(TorchMetric, _float64("MeanAbsolutePercentageError"), _valid_depths, empty),
        ),
    )


def _float64(name: str) -> Callable[[Tensor], Any]:
    """A factory of the torchmetrics regression metric ``name`` with float64 states."""

    def build(predictions: Tensor) -> Any:
        import torchmetrics.regression

        metric = getattr(torchmetrics.regression, name)()
        metric.set_dtype(torch.float64)
        return metric

    return build


def _valid_depths(predictions: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The predictions and targets (float64, flat) of the pixels with a measurement."""
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {list(predictions.shape)} and targets {list(targets.shape)} differ in shape")
    valid = targets > 0
    return predictions.double()[valid], targets.double()[valid]


def normal_metrics() -> tuple[Metric, ...]:
    r"""``(mean_angle, median_angle, within_11.25, within_22.5, within_30)`` of surface
    normals: the angle θ = arccos(⟨n̂, n⟩) in degrees between the L2-normalised prediction
    and target at every valid pixel of the split (target not the zero vector); its mean and
    median (lower is better), and the share of pixels with θ < 11.25°, 22.5°, 30° (higher
    is better).

    The mean and the shares are exact (float64 sums and counts). The median is the lower
    median (the ⌈n/2⌉-th smallest θ of the n valid pixels, as ``torch.median``), read from a
    histogram of θ in bins of :data:`ANGLE_BIN` = 0.01° over [0°, 180°] as the centre of the
    bin that holds it: within 0.005° of the exact value, in memory (18,000 counters)
    independent of the size of the split.
    """
    return (
        Metric("mean_angle", None, False, streaming=functools.partial(_Angles, "mean", 0.0)),
        Metric("median_angle", None, False, streaming=functools.partial(_Angles, "median", 0.0)),
        *(
            Metric(f"within_{t:g}", None, True, streaming=functools.partial(_Angles, "within", t))
            for t in ANGLE_THRESHOLDS
        ),
    )


class _Angles:
    """A histogram of angular errors in bins of ``ANGLE_BIN`` degrees, their float64 sum
    and the count below ``threshold``."""

    BINS = round(180.0 / ANGLE_BIN)

    def __init__(self, statistic: AngleStatistic, threshold: float) -> None:
        self.statistic, self.threshold = statistic, threshold
        self.histogram = torch.zeros(self.BINS, dtype=torch.int64)
        self.total, self.below = 0.0, 0

    def update(self, predictions: Tensor, targets: Tensor) -> None:
        if predictions.shape != targets.shape or predictions.dim() != 4 or predictions.shape[1] != 3:
            raise ValueError(
                f"normals are [N, 3, H, W]; got predictions {list(predictions.shape)}, targets {list(targets.shape)}"
            )
        targets = targets.detach().double()
        valid = targets.abs().sum(dim=1) > 0
        cosine = (F.normalize(predictions.detach().double(), dim=1) * F.normalize(targets, dim=1)).sum(dim=1)
        angles = torch.rad2deg(torch.acos(cosine[valid].clamp(-1.0, 1.0)))
        bins = (angles / ANGLE_BIN).long().clamp(max=self.BINS - 1)
        self.histogram += torch.bincount(bins.cpu(), minlength=self.BINS)
        self.total += float(angles.sum())
        self.below += int((angles < self.threshold).sum())

    def compute(self) -> float:
        count = int(self.histogram.sum())
        if count == 0:
            raise ValueError("the split has no pixel with a known normal: the angle metrics are undefined")
        if self.statistic == "mean":
            return self.total / count
        if self.statistic == "within":
            return self.below / count
        middle = (count + 1) // 2  # rank of the lower median, torch.median's convention
        k = int(torch.searchsorted(torch.cumsum(self.histogram, 0), torch.tensor(middle)))
        return (k + 0.5) * ANGLE_BIN
