"""Training runs in run folders: configuration, training loop, checkpoints, comparisons."""

from dynamtl.train.checkpoint import CheckpointError
from dynamtl.train.compare import Comparison, compare
from dynamtl.train.config import ConfigError, RunConfig, RunPlan, plan, read_config_file
from dynamtl.train.folder import RunFolderError
from dynamtl.train.runs import resume, train, train_or_reuse
from dynamtl.train.session import DataError, TrainingStopped

__all__ = [
    "CheckpointError",
    "Comparison",
    "ConfigError",
    "DataError",
    "RunConfig",
    "RunFolderError",
    "RunPlan",
    "TrainingStopped",
    "compare",
    "plan",
    "read_config_file",
    "resume",
    "train",
    "train_or_reuse",
]
