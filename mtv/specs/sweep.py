"""The spec of a sweep (`mtv sweep SWEEP.yaml`): experiments x seeds x a grid of overrides, each
an ordinary `mtv run` followed by `mtv eval`, on the local machine or a Slurm cluster."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from mtv.specs.base import StrictModel


class LocalExecutorSpec(StrictModel):
    """Runs the jobs on this machine: one after another, or `parallel` side by side on its CPU
    cores."""

    kind: Literal["local"] = "local"
    gpus_per_job: int = Field(
        0, ge=0, description="> 1: each job is `torchrun --standalone --nproc_per_node=N`"
    )
    parallel: int = Field(
        1,
        ge=1,
        description="CPU jobs side by side, each with `threads_per_job` threads: a small model "
        "uses its threads poorly, so several jobs with fewer threads each train more samples "
        "per hour (benchmarks/results/sweep_parallel.md)",
    )
    threads_per_job: int | None = Field(
        None,
        ge=1,
        description="each job's CPU threads (OMP_NUM_THREADS); default: with `parallel` > 1, "
        "the machine's cores shared out, else torch's own choice",
    )

    @model_validator(mode="after")
    def _parallel_jobs_are_cpu_jobs(self) -> LocalExecutorSpec:
        if self.parallel > 1 and self.gpus_per_job > 0:
            raise ValueError(
                "parallel jobs share this machine's CPU cores; jobs on GPUs run one after "
                "another here (or through the slurm executor)"
            )
        return self

    def job_threads(self, cores: int) -> int | None:
        """The CPU threads each job is given on a machine of `cores` cores (None: torch's
        default)."""
        if self.threads_per_job is not None:
            return self.threads_per_job
        return max(1, cores // self.parallel) if self.parallel > 1 else None


class SlurmExecutorSpec(StrictModel):
    """Submits the jobs to Slurm through submitit, one node per job; `cluster: local` runs them
    with submitit's local executor instead (what the tests use)."""

    kind: Literal["slurm"] = "slurm"
    cluster: Literal["slurm", "local"] = "slurm"
    folder: str = Field(
        "submitit", description="submitit's logs and job files, relative to the sweep's `out`"
    )
    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = Field(1, ge=0, description="GPUs of the node (torchrun when > 1)")
    cpus_per_job: int = Field(8, gt=0)
    mem_gb: int = Field(64, gt=0)
    timeout_min: int = Field(24 * 60, gt=0)
    max_parallel: int = Field(64, gt=0, description="Slurm array parallelism")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="further `slurm_*` parameters of submitit, verbatim"
    )


ExecutorSpec = Annotated[LocalExecutorSpec | SlurmExecutorSpec, Field(discriminator="kind")]


class SweepEvalSpec(StrictModel):
    """How every run of the sweep is evaluated (replaces the experiments' own `eval:`)."""

    suite: str = "mini"
    scenes: int = Field(500, ge=4)
    only: list[str] = Field(default_factory=list)
    data: str | None = None
    limit: int | None = Field(None, gt=0)


class ComparisonSpec(StrictModel):
    """Two experiments of the sweep compared paired by seed (a - b), e.g. exact against noisy
    labels for the same task set."""

    a: str = Field(description="experiment name (file stem)")
    b: str = Field(description="experiment name (file stem)")
    title: str


class WeightingClaimSpec(StrictModel):
    """The experiments that test the uniform-weighting claim: one task set under uniform
    weights, and the same under other `optim.weighting` methods."""

    uniform: str = Field(description="experiment name (file stem) with optim.weighting uniform")
    alternatives: list[str] = Field(
        min_length=1, description="experiment names of the same task set under other methods"
    )


class SweepAnalysisSpec(StrictModel):
    """What the aggregate and the report show."""

    tables: list[str] | None = Field(
        None,
        description="experiments (file stems) that form the ladder and synergy tables, one per "
        "task set; default: every experiment, when their task sets differ",
    )
    comparisons: list[ComparisonSpec] = Field(default_factory=list)
    metrics: list[str] | None = Field(
        None,
        description="the headline metrics (`evaluator/metric`) of tables and verdicts; default: "
        "the mini suite's counterparts of the paper's columns",
    )
    pilot: list[str] = Field(
        default_factory=list,
        description="other sweeps whose learning curves the report shows: their `out` "
        "folders, or their aggregate tables (a `.parquet` file, e.g. a committed report's)",
    )
    extra_controls: list[str] = Field(
        default_factory=list,
        description="other positive-control experiments shown beside `control` (e.g. in "
        "another world), each against its own random init; they decide nothing",
    )
    weighting: WeightingClaimSpec | None = Field(
        None, description="experiments for the verdict on uniform loss weighting"
    )
    control: str | None = Field(
        None,
        description="the positive-control experiment (file stem; e.g. experiments/control.yaml): "
        "metrics on which it does not beat its random init significantly are marked blind and "
        "left out of the verdicts",
    )


class SweepSpec(StrictModel):
    """A grid of runs: every experiment x every grid point x every seed. A seed sets
    `runtime.seed` and `data.loader.seed`, so runs of one seed share initial weights (where the
    task sets' modules agree) and data order: task sets are compared paired by seed."""

    name: str = Field(min_length=1)
    description: str = ""
    out: str = Field(description="the sweep's folder: runs, aggregate results, logs")
    archive: str | None = Field(
        None,
        description="a folder that keeps every complete job's record without its checkpoints "
        "(spec, metrics, evaluations, logs: kilobytes a run), relative to the current "
        "directory like `out`. Commit it: a sweep started where `out` is gone (a fresh clone, "
        "another machine) restores its complete jobs from it instead of training them again",
    )
    experiments: list[str] = Field(
        min_length=1, description="experiment files, relative to the sweep file"
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    set: list[str] = Field(
        default_factory=list, description="`--set` overrides applied to every run"
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="field -> values; every combination is a variant of every experiment",
    )
    points: list[dict[str, Any]] = Field(
        default_factory=list,
        description="explicit variants (field -> value each), for settings that do not form a "
        "grid; combined with every grid combination",
    )
    eval: SweepEvalSpec = Field(default_factory=SweepEvalSpec)
    executor: ExecutorSpec = Field(default_factory=LocalExecutorSpec)
    analysis: SweepAnalysisSpec = Field(default_factory=SweepAnalysisSpec)
    report: str | None = Field(
        None,
        description="a Markdown report of the aggregate (runs, learning curves, ladder, synergy, "
        "verdicts) with its figures and tables beside it, relative to the current directory",
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds repeat: {value}")
        return value

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [name for name, values in value.items() if not values]
        if empty:
            raise ValueError(f"grid axes without values: {empty}")
        return value
