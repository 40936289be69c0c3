"""Experiment specs: pydantic models, loaded from YAML with `extends:` and `--set` overrides."""

from mtv.specs.experiment import (
    DataSpec,
    EvalSpec,
    ExperimentSpec,
    LabelsSpec,
    OptimSpec,
    OutputSpec,
    RuntimeSpec,
    ScheduleSpec,
    ViewsSpec,
)
from mtv.specs.loading import (
    SPEC_KINDS,
    ResolvedSpec,
    SpecError,
    SpecProblem,
    experiment_json_schema,
    json_schema,
    load_run_spec,
    load_spec,
    resolve_spec,
    spec_kind,
    spec_to_yaml,
)
from mtv.specs.model import EncoderSpec, ModelSpec, TeacherSpec, TextSpec, TokenizerSpec
from mtv.specs.tasks import TaskSpecBase, register_task_spec, task_spec_classes

__all__ = [
    "SPEC_KINDS",
    "DataSpec",
    "EncoderSpec",
    "EvalSpec",
    "ExperimentSpec",
    "LabelsSpec",
    "ModelSpec",
    "OptimSpec",
    "OutputSpec",
    "ResolvedSpec",
    "RuntimeSpec",
    "ScheduleSpec",
    "SpecError",
    "SpecProblem",
    "TaskSpecBase",
    "TeacherSpec",
    "TextSpec",
    "TokenizerSpec",
    "ViewsSpec",
    "experiment_json_schema",
    "json_schema",
    "load_run_spec",
    "load_spec",
    "register_task_spec",
    "resolve_spec",
    "spec_kind",
    "spec_to_yaml",
    "task_spec_classes",
]
