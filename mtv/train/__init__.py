"""Training: data preparation, the loop (compile, DDP, bf16, EMA teacher, guards), checkpoints
with exact resume, metrics, and gradient-interaction probes."""

from mtv.runs.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mtv.train.prepare import DataPreparationError, RunData, prepare_data
from mtv.train.trainer import (
    Interrupted,
    NonFiniteLoss,
    RunSummary,
    Trainer,
    TrainingError,
    default_run_dir,
)

__all__ = [
    "DataPreparationError",
    "Interrupted",
    "NonFiniteLoss",
    "RunData",
    "RunSummary",
    "Trainer",
    "TrainingError",
    "default_run_dir",
    "latest_checkpoint",
    "load_checkpoint",
    "prepare_data",
    "save_checkpoint",
]
