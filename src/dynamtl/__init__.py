"""dynamtl: dynamic task weighting for multi-task and auxiliary learning in PyTorch."""

from dynamtl.aggregation import (
    IMTLG,
    MGDA,
    Aggregation,
    AlignedMTL,
    CAGrad,
    GradDrop,
    GradientAggregation,
    GradVac,
    NashMTL,
    PCGrad,
    Sum,
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
    RLW,
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
    "IMTLG",
    "MGDA",
    "AlignedMTL",
    "CAGrad",
    "GradDrop",
    "GradVac",
    "GradientAggregation",
    "NashMTL",
    "PCGrad",
    "DWA",
    "FAMO",
    "GCS",
    "RLW",
    "Aggregation",
    "AutoLambda",
    "Equal",
    "GradNorm",
    "HydaLearn",
    "LookAhead",
    "LossWeighting",
    "MultiTask",
    "NonFiniteLossError",
    "OLAux",
    "Objective",
    "Static",
    "StepContext",
    "StepInfo",
    "Sum",
    "Tasks",
    "Uncertainty",
    "Weighting",
]
