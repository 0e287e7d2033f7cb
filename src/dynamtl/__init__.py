"""dynamtl: dynamic task weighting for multi-task and auxiliary learning in PyTorch."""

from dynamtl.aggregation import (
    IMTLG,
    MGDA,
    Aggregation,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    GradDrop,
    GradientAggregation,
    GradVac,
    NashMTL,
    PCGrad,
    Sum,
    UPGrad,
)
from dynamtl.context import StepContext
from dynamtl.lookahead import LookAhead
from dynamtl.objective import Objective
from dynamtl.step import MultiTask, NonFiniteLossError, StepInfo
from dynamtl.tasks import Tasks
from dynamtl.weighting import (
    DWA,
    FAMO,
    GCS,
    GLS,
    IMTLL,
    RLW,
    STCH,
    AutoLambda,
    Equal,
    GradNorm,
    HydaLearn,
    LossWeighting,
    OLAux,
    Static,
    Uncertainty,
    Weighting,
)

__version__ = "0.1.0"

__all__ = [
    "DWA",
    "FAMO",
    "GCS",
    "GLS",
    "IMTLG",
    "IMTLL",
    "MGDA",
    "RLW",
    "STCH",
    "Aggregation",
    "AlignedMTL",
    "AutoLambda",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "Equal",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "GradientAggregation",
    "HydaLearn",
    "LookAhead",
    "LossWeighting",
    "MultiTask",
    "NashMTL",
    "NonFiniteLossError",
    "OLAux",
    "Objective",
    "PCGrad",
    "Static",
    "StepContext",
    "StepInfo",
    "Sum",
    "Tasks",
    "UPGrad",
    "Uncertainty",
    "Weighting",
]
