"""The built-in evaluators, one evaluator type a module; importing this package registers them
(`mtv.eval.contract.register_evaluator`), in the order a suite runs and reports them. An
evaluator of your own is one module that defines and registers its class, imported before
evaluation (an experiment's `imports:` does so)."""

# ruff: noqa: I001  (the import order is the order of the results)
from mtv.eval.evaluators import zero_shot
from mtv.eval.evaluators import pooled_probe
from mtv.eval.evaluators import object_shape
from mtv.eval.evaluators import retrieval
from mtv.eval.evaluators import segmentation
from mtv.eval.evaluators import depth_probe
from mtv.eval.evaluators import dpt_probe
from mtv.eval.evaluators import geometric_correspondence
from mtv.eval.evaluators import semantic_correspondence
from mtv.eval.evaluators import relative_depth
from mtv.eval.evaluators import object_depth

__all__ = [
    "depth_probe",
    "dpt_probe",
    "geometric_correspondence",
    "object_depth",
    "object_shape",
    "pooled_probe",
    "relative_depth",
    "retrieval",
    "segmentation",
    "semantic_correspondence",
    "zero_shot",
]
