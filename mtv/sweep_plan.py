"""What a sweep's jobs are: every experiment x grid point x seed planned from the sweep file
(`plan_sweep`), and each job's state: complete (`sweep-job.json` names it and its evaluation is
of today's protocols), archived, or trained under another version of its experiment. Running
them is `mtv.sweep`'s."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from mtv.eval import data_identity, eval_settings, evaluator_versions, outdated_evaluators
from mtv.runs.checkpoint import latest_checkpoint
from mtv.specs import SpecError, load_run_spec, load_spec
from mtv.specs.loading import load_yaml_model
from mtv.specs.sweep import SweepEvalSpec, SweepSpec
from mtv.train.rundir import changed_training_fields

MARKER = "sweep-job.json"


class SweepError(RuntimeError):
    """The sweep cannot be planned or some of its jobs failed (the message names them)."""


def mtv_command() -> list[str]:
    """How a job runs `mtv`: the installed command's module, with `-P` so that the job's working
    folder is not put first on `sys.path` (`imports:` are never searched for there; `python -m`
    alone would)."""
    return [sys.executable, "-P", "-m", command_module()]


@functools.cache
def command_module() -> str:
    """The module behind the installed `mtv` command, read from the package's metadata: a job
    runs the command users run, and the library names no command-line package of its own."""
    for point in metadata.entry_points(group="console_scripts", name="mtv"):
        if point.dist is None or point.dist.name == "mtv":
            return point.module
    raise RuntimeError("the `mtv` command is not installed: `pip install -e .` in the repository")


@dataclass(frozen=True)
class SweepJob:
    experiment: str  # the experiment file's stem
    path: Path  # the experiment file
    variant: str  # the grid point, e.g. "optim.lr=0.001"; "" without a grid
    seed: int
    overrides: tuple[str, ...]  # every `--set` of the run
    run_dir: Path
    evaluation: SweepEvalSpec
    gpus: int = 0
    entry: str = ""  # the experiment as the sweep file lists it (relative to the sweep file)
    record: Path | None = None  # where the sweep's `archive` keeps the finished run's record

    @property
    def label(self) -> str:
        return "/".join(p for p in (self.experiment, self.variant, f"seed {self.seed}") if p)

    def identity(self) -> dict[str, Any]:
        """What makes a finished job this job: change any of it and the job runs again. The
        experiment as the sweep file lists it, not its absolute path: the same sweep resumed
        from another copy of the repository finds its finished runs."""
        return {
            "experiment": self.entry or str(self.path),
            "overrides": list(self.overrides),
            "eval": self.evaluation.model_dump(mode="json"),
        }

    def complete(self) -> bool:
        """Trained and evaluated as this job asks, by today's evaluation protocols."""
        return self._marked() and not self.outdated()

    def data(self) -> str:
        """The data identity of the job's evaluation (`data_identity`): the rows of the run's
        history that are this sweep's, whatever else was evaluated on the run by hand."""
        evaluation = self.evaluation
        settings = eval_settings(
            load_run_spec(self.run_dir).eval,
            evaluation.suite,
            list(evaluation.only) or None,
            evaluation.scenes,
            evaluation.data,
            evaluation.limit,
        )
        return data_identity(settings)

    def protocol(self) -> dict[str, int]:
        """Today's version of each evaluator the job's evaluation runs."""
        versions = evaluator_versions(self.evaluation.suite)
        only = set(self.evaluation.only)
        return {name: v for name, v in sorted(versions.items()) if not only or name in only}

    def outdated(self) -> list[str]:
        """The evaluators of a finished job's evaluation that must run again (not the training):
        those its scores hold from an older protocol version, and those that are new or changed
        since the job was marked (the marker records the versions it ran)."""
        if not self._marked():
            return []
        wanted = self.protocol()
        recorded = self._recorded().get("protocol")
        stale = (
            {name for name, version in wanted.items() if recorded.get(name) != version}
            if isinstance(recorded, dict)
            else set()
        )
        try:
            stale |= set(outdated_evaluators(self.run_dir, self.evaluation.suite, self.data()))
        except (FileNotFoundError, SpecError):
            stale |= set(wanted)  # marked, but its spec or scores are gone: evaluate it again
        return sorted(stale & set(wanted))

    def changed(self) -> list[str]:
        """The training fields (`TRAINING_FIELDS`) in which the job's experiment today differs
        from the spec its run trained with; empty when they agree or nothing trained yet."""
        if not (self.run_dir / "spec.yaml").is_file():
            return []
        return changed_training_fields(
            load_run_spec(self.run_dir), load_spec(self.path, self.overrides)
        )

    def archived(self) -> bool:
        """Whether the sweep's archive holds this job's record, complete as `complete` asks."""
        record = self.record
        return record is not None and replace(self, run_dir=record, record=None).complete()

    def _recorded(self) -> dict[str, Any]:
        try:
            recorded = json.loads((self.run_dir / MARKER).read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def _marked(self) -> bool:
        recorded = self._recorded()
        if not recorded:
            return False
        # What was run, beside what makes the job this job: not part of its identity.
        recorded = {k: v for k, v in recorded.items() if k != "protocol"}
        wanted = self.identity()
        written = recorded.get("experiment")
        if isinstance(written, str) and Path(written).is_absolute():
            # Markers written before the entry was recorded hold the absolute path: the same
            # experiment is the same folder and file name, wherever the repository lay.
            same = Path(written).parts[-2:] == self.path.parts[-2:]
            recorded = {**recorded, "experiment": wanted["experiment"] if same else written}
        return recorded == wanted

    def _mtv(self) -> list[str]:
        if self.gpus > 1:
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={self.gpus}",
                "--no-python",
                *mtv_command(),
            ]
        return mtv_command()

    def run_command(self) -> list[str]:
        command = [*self._mtv(), "run", str(self.path), "--out", str(self.run_dir)]
        command += [arg for override in self.overrides for arg in ("--set", override)]
        if latest_checkpoint(self.run_dir) is not None:
            command.append("--resume")
        return command

    def eval_command(self, only: Sequence[str] = ()) -> list[str]:
        """`mtv eval` of the run as the job asks; of the evaluators `only` names when given
        (those out of date: the others' scores stand)."""
        evaluation = self.evaluation
        command = [*mtv_command(), "eval", str(self.run_dir)]
        command += ["--suite", evaluation.suite, "--scenes", str(evaluation.scenes)]
        command += [arg for name in (only or evaluation.only) for arg in ("--only", name)]
        if evaluation.data is not None:
            command += ["--data", evaluation.data]
        if evaluation.limit is not None:
            command += ["--limit", str(evaluation.limit)]
        return command


def _value_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _variants(spec: SweepSpec) -> list[tuple[str, tuple[str, ...]]]:
    """(name, overrides) of every variant: each of the `points` (or none) combined with every
    combination of the `grid` axes; one unnamed variant when there are neither."""
    axes = list(spec.grid)
    out = []
    for point in spec.points or [{}]:
        for values in itertools.product(*(spec.grid[axis] for axis in axes)):
            chosen = [*point.items(), *zip(axes, values, strict=True)]
            pairs = [f"{field}={_value_text(value)}" for field, value in chosen]
            out.append(("+".join(pairs), tuple(pairs)))
    return out


def _folder_name(variant: str) -> str:
    """A grid point as one path component (unsafe characters replaced, long names hashed)."""
    safe = "".join(c if c.isalnum() or c in "._=+-" else "_" for c in variant)
    if len(safe) > 80:
        safe = safe[:60] + "-" + hashlib.blake2b(variant.encode(), digest_size=6).hexdigest()
    return safe


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """The validated sweep file. Raises SpecError naming the file and field."""
    return load_yaml_model(path, SweepSpec, overrides)


def plan_sweep(spec: SweepSpec, sweep_file: str | Path) -> list[SweepJob]:
    """Every job of the sweep, in order: experiment, then grid point, then seed. Each
    experiment (with every override) is validated here, so a typo fails before any training."""
    base = Path(sweep_file).resolve().parent
    out = Path(spec.out)
    gpus = spec.executor.gpus_per_job
    jobs = []
    problems = []
    paths = []
    for entry in spec.experiments:
        path = (base / entry).resolve()
        if not path.is_file():
            problems.append(f"experiments: {entry} (looked for {path}) does not exist")
        paths.append(path)
    entries = dict(zip(paths, spec.experiments, strict=True))
    # Seed-major order: a sweep stopped halfway has whole seeds of every experiment to analyse.
    for seed in spec.seeds:
        for path in paths:
            for variant, grid_overrides in _variants(spec):
                overrides = (
                    *spec.set,
                    *grid_overrides,
                    f"runtime.seed={seed}",
                    f"data.loader.seed={seed}",
                )
                folder = out / path.stem
                if variant:
                    folder = folder / _folder_name(variant)
                run_dir = folder / f"seed-{seed}"
                record = (
                    None if spec.archive is None else Path(spec.archive) / run_dir.relative_to(out)
                )
                jobs.append(
                    SweepJob(
                        path.stem,
                        path,
                        variant,
                        seed,
                        overrides,
                        run_dir,
                        spec.eval,
                        gpus,
                        entries[path],
                        record,
                    )
                )
    stems = [path.stem for path in paths]
    if len(set(stems)) != len(stems):
        problems.append(f"experiments: two files share a name ({stems}); run folders would clash")
    if problems:
        raise SweepError("; ".join(problems))
    for seed_zero in jobs[: len(paths) * len(_variants(spec))]:
        load_spec(seed_zero.path, seed_zero.overrides)  # raises SpecError naming the field
    return jobs


__all__ = ["MARKER", "SweepError", "SweepJob", "load_sweep", "mtv_command", "plan_sweep"]
