"""Weightings: who decides the task weights λ at every step."""

from dynamtl.weighting.auto_lambda import AutoLambda
from dynamtl.weighting.base import LossWeighting, Weighting
from dynamtl.weighting.db_mtl import DBMTL
from dynamtl.weighting.dwa import DWA
from dynamtl.weighting.equal import Equal
from dynamtl.weighting.excess_mtl import ExcessMTL
from dynamtl.weighting.famo import FAMO
from dynamtl.weighting.gcs import GCS
from dynamtl.weighting.gls import GLS
from dynamtl.weighting.gradnorm import GradNorm
from dynamtl.weighting.hydalearn import HydaLearn
from dynamtl.weighting.imtl_l import IMTLL
from dynamtl.weighting.ol_aux import OLAux
from dynamtl.weighting.rlw import RLW
from dynamtl.weighting.static import Static
from dynamtl.weighting.stch import STCH
from dynamtl.weighting.uncertainty import Uncertainty

__all__ = [
    "DBMTL",
    "DWA",
    "FAMO",
    "GCS",
    "GLS",
    "IMTLL",
    "RLW",
    "STCH",
    "AutoLambda",
    "Equal",
    "ExcessMTL",
    "GradNorm",
    "HydaLearn",
    "LossWeighting",
    "OLAux",
    "Static",
    "Uncertainty",
    "Weighting",
]
