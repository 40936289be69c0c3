"""The six MTV tasks, one file each; importing this package registers them with the graph."""

from mtv.tasks import depth, distill, ground, koleo, masked, vl
from mtv.tasks.base import (
    CAPTION_TEXT,
    GLOBAL,
    LOCAL,
    MASKED,
    REGION_TEXT,
    TASK_REGISTRY,
    StepInputs,
    Task,
    TaskEnv,
    TaskNeeds,
    TaskOutput,
    register_task,
)

__all__ = [
    "CAPTION_TEXT",
    "GLOBAL",
    "LOCAL",
    "MASKED",
    "REGION_TEXT",
    "TASK_REGISTRY",
    "StepInputs",
    "Task",
    "TaskEnv",
    "TaskNeeds",
    "TaskOutput",
    "depth",
    "distill",
    "ground",
    "koleo",
    "masked",
    "register_task",
    "vl",
]
