"""mtv: multi-task visual representation pretraining (SigLIP + DINO/iBOT/KoLeo + region-text
grounding + relative depth on one ViT), declared as YAML experiments.

The names below are imported on first use (PEP 562), so `import mtv.specs` (or any other layer)
loads that layer and what it needs, not the whole toolkit."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Batch": "mtv.data.batch",
    "Experiment": "mtv.graph.experiment",
    "load_experiment": "mtv.graph.experiment",
    "GraphError": "mtv.graph",
    "GraphPlan": "mtv.graph",
    "StepOutput": "mtv.graph",
    "TaskGraph": "mtv.graph",
    "count_parameters": "mtv.graph",
    "plan_graph": "mtv.graph",
    "ExperimentSpec": "mtv.specs",
    "SpecError": "mtv.specs",
    "load_spec": "mtv.specs",
}

__all__ = [
    "Batch",
    "Experiment",
    "ExperimentSpec",
    "GraphError",
    "GraphPlan",
    "SpecError",
    "StepOutput",
    "TaskGraph",
    "__version__",
    "count_parameters",
    "load_experiment",
    "load_spec",
    "plan_graph",
]

if TYPE_CHECKING:
    from mtv.data.batch import Batch
    from mtv.graph import GraphError, GraphPlan, StepOutput, TaskGraph, count_parameters, plan_graph
    from mtv.graph.experiment import Experiment, load_experiment
    from mtv.specs import ExperimentSpec, SpecError, load_spec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mtv' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value
