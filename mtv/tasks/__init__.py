"""The MTV tasks, one module each. Importing this package imports every module in it, and each
registers its spec and task classes (`register_task`), so a new task here is one new file; a task
of your own registers the same way when its module is imported."""

import importlib
import pkgutil

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

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

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
    "register_task",
]
