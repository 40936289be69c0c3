"""The task graph: an experiment spec planned into the views, labels, heads and shared encoder
passes of one training step (`plan`, pure data), and executed (`task_graph`): the student
(`student`) and the EMA teacher (`teacher`) each run their passes (`passes`) through their own
encoder, every task reads the shared results."""

from mtv.graph.plan import GraphError, GraphPlan, GraphProblem, ViewPass, plan_graph
from mtv.graph.student import StudentModel
from mtv.graph.task_graph import StepOutput, TaskGraph, count_parameters, trainable_parameters
from mtv.graph.teacher import EMATeacher, ema_update

__all__ = [
    "EMATeacher",
    "GraphError",
    "GraphPlan",
    "GraphProblem",
    "StepOutput",
    "StudentModel",
    "TaskGraph",
    "ViewPass",
    "count_parameters",
    "ema_update",
    "plan_graph",
    "trainable_parameters",
]
