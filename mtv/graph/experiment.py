"""The top-level entry for an experiment file: the spec, validated, plus its task-graph plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mtv.graph import GraphError, GraphPlan, count_parameters, plan_graph
from mtv.specs import ExperimentSpec, ResolvedSpec, SpecError, SpecProblem, resolve_spec


@dataclass
class Experiment:
    resolved: ResolvedSpec
    plan: GraphPlan

    @property
    def spec(self) -> ExperimentSpec:
        return self.resolved.spec

    def parameter_counts(self) -> dict[str, int]:
        return count_parameters(self.spec)


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Load, validate and plan an experiment file. Raises SpecError: every problem names the
    file (or `--set` override) and the field, including task-graph problems such as a task whose
    label the data does not provide."""
    resolved = resolve_spec(path, overrides)
    try:
        plan = plan_graph(resolved.spec)
    except GraphError as err:
        problems = []
        for p in err.problems:
            loc: tuple[str | int, ...] = ("tasks", p.task_index) if p.task_index is not None else ()
            field = f"tasks[{p.task_index}] ({p.kind})" if p.task_index is not None else ""
            problems.append(SpecProblem(resolved.source_of(loc), field, p.message))
        raise SpecError(problems) from None
    return Experiment(resolved, plan)
