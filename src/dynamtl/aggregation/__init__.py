"""Aggregations: how the λ-weighted task gradients of the shared parameters are combined."""

from dynamtl.aggregation.aligned_mtl import AlignedMTL
from dynamtl.aggregation.base import Aggregation, GradientAggregation
from dynamtl.aggregation.cagrad import CAGrad
from dynamtl.aggregation.config import ConFIG
from dynamtl.aggregation.cr_mogm import CRMOGM
from dynamtl.aggregation.dualproj import DualProj
from dynamtl.aggregation.fairgrad import FairGrad
from dynamtl.aggregation.graddrop import GradDrop
from dynamtl.aggregation.gradvac import GradVac
from dynamtl.aggregation.imtl_g import IMTLG
from dynamtl.aggregation.mgda import MGDA
from dynamtl.aggregation.moco import MoCo
from dynamtl.aggregation.modo import MoDo
from dynamtl.aggregation.nash_mtl import NashMTL
from dynamtl.aggregation.pcgrad import PCGrad
from dynamtl.aggregation.representation import OnRepresentation
from dynamtl.aggregation.sdmgrad import SDMGrad
from dynamtl.aggregation.sum import Sum
from dynamtl.aggregation.upgrad import UPGrad

__all__ = [
    "CRMOGM",
    "IMTLG",
    "MGDA",
    "Aggregation",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "FairGrad",
    "GradDrop",
    "GradVac",
    "GradientAggregation",
    "MoCo",
    "MoDo",
    "NashMTL",
    "OnRepresentation",
    "PCGrad",
    "SDMGrad",
    "Sum",
    "UPGrad",
]
