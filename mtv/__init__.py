"""mtv: multi-task visual representation pretraining (SigLIP + DINO/iBOT/KoLeo + region-text
grounding + relative depth on one ViT), declared as YAML experiments."""

from mtv.batch import Batch
from mtv.experiment import Experiment, load_experiment
from mtv.graph import GraphError, GraphPlan, StepOutput, TaskGraph, count_parameters, plan_graph
from mtv.specs import ExperimentSpec, SpecError, load_spec

__version__ = "0.1.0"

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
