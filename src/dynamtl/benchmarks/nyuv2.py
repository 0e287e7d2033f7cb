"""NYUv2: 13-class semantic segmentation, depth and surface normals of indoor scenes."""

from __future__ import annotations

from typing import ClassVar

from dynamtl.benchmarks._dense import DenseBenchmark
from dynamtl.benchmarks.base import TaskSpec, auto_lambda_training
from dynamtl.data.dense_transforms import TargetKind
from dynamtl.data.nyuv2 import NYUv2Dataset
from dynamtl.metrics_dense import (
    error_metrics,
    normal_loss,
    normal_metrics,
    segmentation_loss,
    segmentation_metrics,
    valid_l1_loss,
)


class NYUv2(DenseBenchmark):
    """NYUv2 at 288×384 (795 training, 654 test images), the dense benchmark of MTAN and
    Auto-Lambda.

    **Data**: :class:`~dynamtl.data.nyuv2.NYUv2Dataset`, read from the MTAN project's
    pre-processed files under ``root/nyuv2/{train,val}/{image,label,depth,normal}/<i>.npy``
    (layout, conventions and errors there). Splits: training = the ``train`` folder (less
    ``val_size`` held-out images; only its first ``limit`` images in seeded order when
    given), validation = the held-out images, or without ``val_size`` the training images
    un-augmented, test = the ``val`` folder (the split the papers report).

    **Tasks** (inputs ``float32 [N, 3, 288, 384]`` in [0, 1]):

    * ``"seg"``: 13-class segmentation, pixel-wise cross-entropy ignoring −1; metrics mIoU
      (headline) and pixel accuracy (:func:`~dynamtl.metrics_dense.segmentation_metrics`);
    * ``"depth"``: ``[N, 1, H, W]`` metres, L1 over measured pixels; absolute (headline) and
      relative error;
    * ``"normal"``: ``[N, 3, H, W]`` unit normals, 1 − cosine over known pixels; mean
      (headline) and median angle, shares within 11.25°, 22.5°, 30°;
    * ``"noise"`` with ``noise=True`` (see :class:`~dynamtl.benchmarks._dense.DenseBenchmark`).

    ``primary = ("seg",)`` for auxiliary learning: Auto-Lambda trains each of the three
    tasks as the primary one in turn, with the others (and noise) as auxiliaries; pass
    another primary to study the other two.

    **Training augmentation** (MTAN / Auto-Lambda): scale s ∈ {1, 1.2, 1.5} with a random
    crop of 288/s × 384/s resized back to 288×384 (depth ÷ s), then a horizontal flip with
    probability ½ (normal x negated): :class:`~dynamtl.data.dense_transforms.DenseAugmentation`.

    **Model** (:meth:`model`): ``network="split"``: :class:`~dynamtl.models.SplitNet`;
    ``"mtan"``: :class:`~dynamtl.models.MTAN`; both on a dilated ResNet-50 (output stride 8)
    with a DeepLabv3 head per task, outputs at the input size, normals L2-normalised.

    **Defaults** (the paper's): SGD, learning rate 0.1, momentum 0.9, weight decay 1e-4,
    cosine annealing over 200 epochs (to 0), batch 4; Auto-Lambda's λ learning rate 1e-4
    (Adam on λ).
    """

    name = "nyuv2"
    description = "NYUv2 (MTAN's 288x384 pre-processing): 13-class segmentation, depth, surface normals"
    task_specs: ClassVar[dict[str, TaskSpec]] = {
        "seg": TaskSpec(segmentation_loss, segmentation_metrics(NYUv2Dataset.NUM_CLASSES), NYUv2Dataset.NUM_CLASSES),
        "depth": TaskSpec(valid_l1_loss, error_metrics(), 1),
        "normal": TaskSpec(normal_loss, normal_metrics(), 3),
    }
    kinds: ClassVar[dict[str, TargetKind]] = {"seg": "plain", "depth": "depth", "normal": "normal"}
    unit_heads = ("normal",)
    dataset = NYUv2Dataset
    scales = (1.0, 1.2, 1.5)
    crop = None
    primary = ("seg",)
    defaults = auto_lambda_training(batch_size=4, weight_decay=1e-4, auto_lambda_lr=1e-4)
