"""Finding the runs to analyse, and smoke-sized runs of every task set when there are none (so
notebooks and tests run top to bottom in seconds on a CPU)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from mtv.eval import evaluate_run, outdated_evaluators
from mtv.specs import load_run_spec, load_spec
from mtv.train import Trainer

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
# The ablation ladder (Table 3) and the synergy singles and pairs (Table 4), as task lists.
TASK_SETS: dict[str, str] = {
    "vl": "[vl]",
    "vl_ssl": "[vl, distill, masked, koleo]",
    "vl_ground": "[vl, ground]",
    "vl_depth": "[vl, depth]",
    "vl_ssl_ground": "[vl, distill, masked, koleo, ground]",
    "vl_ssl_depth": "[vl, distill, masked, koleo, depth]",
    "vl_ground_depth": "[vl, ground, depth]",
    "vl_ssl_ground_depth": "[vl, distill, masked, koleo, ground, depth]",
}


def train_smoke(
    root: Path, name: str, *overrides: str, report: Callable[[str], None] | None = None
) -> Path:
    """A few steps of `experiments/smoke.yaml` into `root/name`, its mini-world in `root/mini`."""
    spec = load_spec(
        EXPERIMENTS / "smoke.yaml",
        [f"data.source.root={root / 'mini'}", "data.loader.workers=0", f"name={name}", *overrides],
    )
    Trainer(spec, root / name, report=report or (lambda message: None)).run()
    return root / name


def train_smoke_ladder(root: Path, steps: int = 3) -> dict[str, Path]:
    """Smoke runs of all eight task sets of the ladder and synergy tables, under `root`."""
    return {
        name: train_smoke(root, name, f"tasks={tasks}", f"schedule.steps={steps}")
        for name, tasks in TASK_SETS.items()
    }


def run_dirs(folder: Path) -> list[Path]:
    """The run directories directly under `folder` (those with a spec and a checkpoint)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if (p / "spec.yaml").is_file() and (p / "checkpoints").is_dir()
    )


def notebook_runs(default: str | Path = "runs", names: Sequence[str] | None = None) -> list[Path]:
    """The runs a notebook analyses: those under `$MTV_RUNS` if set, else under `default`;
    when there are none, the smoke ladder is trained into a temporary folder (seconds), so the
    notebook still runs top to bottom. `names` keeps only runs with those directory names."""
    folder = Path(os.environ.get("MTV_RUNS") or default)
    found = run_dirs(folder)
    if not found:
        print(f"no runs under {folder}: training smoke-sized runs of every task set")
        found = list(train_smoke_ladder(Path(tempfile.mkdtemp(prefix="mtv-smoke-"))).values())
    if names is not None:
        found = [p for p in found if p.name in names]
    return found


def evaluate_unevaluated(
    runs: Sequence[Path],
    suite: str = "mini",
    scenes: int = 120,
    say: Callable[[str], None] = print,
) -> list[Path]:
    """Evaluate, with `suite`, each run that has no results of it yet, or whose results come
    from an older protocol of some evaluator; the runs that have results of it now. A run
    trained on data of its own is not evaluated on the mini-world (minutes per run for a
    number about other images): it is named, with the command that evaluates it on its own
    data, and left out."""
    measured = []
    for run in runs:
        evaluated = (run / "eval" / f"{suite}.parquet").is_file()
        stale = outdated_evaluators(run, suite) if evaluated else []
        if stale:
            say(f"{run.name}: {', '.join(stale)} measured by an older protocol")
        if not evaluated or stale:
            source = load_run_spec(run).data.source
            if suite == "mini" and source.kind != "miniworld":
                say(
                    f"{run.name} trains on {source.kind} data, not the mini-world: not evaluated "
                    f"on it; evaluate it on held-out data of its own with `mtv eval {run} "
                    "--suite source --data HELD_OUT` (and choose that suite here)"
                )
                continue
            say(f"evaluating {run.name} ({suite} suite)")
            evaluate_run(run, suite=suite, scenes=scenes)
        measured.append(run)
    return measured
