"""Networks of the paper-scale benchmarks: the dense multi-task networks of MTAN and
Auto-Lambda (Split and MTAN on a dilated ResNet-50 with DeepLabv3 heads) and the
multi-domain VGG-16 of Auto-Lambda's CIFAR-100 experiments."""

from dynamtl.models.deeplab import ASPPHead
from dynamtl.models.mtan import MTAN
from dynamtl.models.resnet import DilatedResNet50
from dynamtl.models.split import SplitNet
from dynamtl.models.vgg_multidomain import MultiDomainVGG16

DENSE_NETWORKS: dict[str, type[SplitNet] | type[MTAN]] = {"split": SplitNet, "mtan": MTAN}

__all__ = ["DENSE_NETWORKS", "MTAN", "ASPPHead", "DilatedResNet50", "MultiDomainVGG16", "SplitNet"]
