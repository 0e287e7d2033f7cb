"""CityScapes: semantic segmentation, part segmentation and disparity of street scenes."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from dynamtl.benchmarks._dense import DenseBenchmark
from dynamtl.benchmarks.base import TaskSpec, auto_lambda_training
from dynamtl.data.cityscapes import CityScapesDataset, prepare_cityscapes
from dynamtl.data.dense_transforms import TargetKind
from dynamtl.metrics_dense import error_metrics, segmentation_loss, segmentation_metrics, valid_l1_loss

NUM_CLASSES, NUM_PARTS = CityScapesDataset.NUM_CLASSES, CityScapesDataset.NUM_PARTS


class CityScapes(DenseBenchmark):
    """CityScapes at 256×512 (2,975 training, 500 test frames), the second dense benchmark of
    Auto-Lambda.

    **Data**: :class:`~dynamtl.data.cityscapes.CityScapesDataset`, read from arrays under
    ``root/cityscapes/prepared`` that :func:`~dynamtl.data.cityscapes.prepare_cityscapes`
    builds from the official release folders ``root/cityscapes/{leftImg8bit,gtFine,
    disparity,gtFinePanopticParts}`` (layout, label conventions and errors there).
    :meth:`splits` prepares them itself, once, when the release is there and the arrays are
    not (a few minutes). Splits: training = the official ``train`` frames (less
    ``val_size`` held out, first ``limit`` in seeded order), validation = the held-out
    frames or, without ``val_size``, the training frames un-augmented, test = the official
    ``val`` frames (the split the papers report).

    **Tasks** (inputs ``float32 [N, 3, 256, 512]`` in [0, 1]; training crops 256×256):

    * ``"seg"``: the 19 Cityscapes training classes, cross-entropy ignoring void; mIoU
      (headline) and pixel accuracy;
    * ``"part_seg"``: 10 classes, background and the parts of humans and vehicles (our
      definition, see :func:`~dynamtl.data.cityscapes.prepare_cityscapes`); mIoU and pixel
      accuracy;
    * ``"disparity"``: ``[N, 1, H, W]`` pixels, L1 over measured pixels; absolute (headline)
      and relative error;
    * ``"noise"`` with ``noise=True``.

    ``primary = ("seg",)`` for auxiliary learning (Auto-Lambda trains each task as the
    primary one in turn; pass another primary for the others).

    **Training augmentation**: a random 256×256 crop and a horizontal flip with probability
    ½ (:class:`~dynamtl.data.dense_transforms.DenseAugmentation` with the single scale 1, so
    disparities keep their values; a rescaling crop would multiply them by the scale).

    **Model** and ``network``: as :class:`~dynamtl.benchmarks.nyuv2.NYUv2` (Split or MTAN on
    a dilated ResNet-50 with DeepLabv3 heads). **Defaults** (the paper's): SGD, learning rate
    0.1, momentum 0.9, weight decay 1e-4, cosine annealing over 200 epochs, batch 4;
    Auto-Lambda's λ learning rate 3e-5.
    """

    name = "cityscapes"
    description = "CityScapes at 256x512: 19-class segmentation, 10-class human/vehicle part segmentation, disparity"
    task_specs: ClassVar[dict[str, TaskSpec]] = {
        "seg": TaskSpec(segmentation_loss, segmentation_metrics(NUM_CLASSES), NUM_CLASSES),
        "part_seg": TaskSpec(segmentation_loss, segmentation_metrics(NUM_PARTS), NUM_PARTS),
        "disparity": TaskSpec(valid_l1_loss, error_metrics(), 1),
    }
    kinds: ClassVar[dict[str, TargetKind]] = {"seg": "plain", "part_seg": "plain", "disparity": "disparity"}
    unit_heads = ()
    dataset = CityScapesDataset
    scales = (1.0,)
    crop = (256, 256)
    primary = ("seg",)
    defaults = auto_lambda_training(batch_size=4, weight_decay=1e-4, auto_lambda_lr=3e-5)

    def prepare(self, root: Path) -> None:
        """Build the arrays of a split from the release when they are missing and the
        release is there (otherwise the data set's error says what to get)."""
        release = root / "cityscapes" / "leftImg8bit"
        for split in ("train", "val"):
            if not CityScapesDataset.is_prepared(root, split) and (release / split).is_dir():
                prepare_cityscapes(root, [split])
