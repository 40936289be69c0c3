"""`mtv sweep SWEEP.yaml`: experiments x grid x seeds, trained, evaluated, aggregated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mtv_cli.output import console, fail
from rich.markup import escape
from rich.table import Table

from mtv.specs import SpecError
from mtv.sweep import (
    SweepError,
    SweepStopped,
    load_sweep,
    plan_sweep,
    report_so_far,
    run_sweep,
)


def _say(message: str) -> None:
    console.print(escape(message), highlight=False, soft_wrap=True)


def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="sweep YAML file")],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a field of the sweep file, e.g. --set 'seeds=[0,1]'"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the jobs and whether each is complete; run none")
    ] = False,
    reevaluate: Annotated[
        bool,
        typer.Option(
            "--reevaluate",
            help="evaluate complete jobs again (no retraining), e.g. after the "
            "evaluation code changed",
        ),
    ] = False,
    partial: Annotated[
        bool,
        typer.Option(
            "--partial",
            help="write the analysis of the jobs complete so far under OUT/partial/ (a report "
            "marked partial, never the sweep's own report); run none",
        ),
    ] = False,
) -> None:
    """Run a sweep: every experiment x grid point x seed as an ordinary `mtv run` + `mtv eval`,
    locally one after another or on Slurm (submitit). Started again after a crash or a kill,
    it skips complete jobs, resumes stopped runs and runs the rest; then it writes the aggregate
    (OUT/results.parquet), the seed statistics and, if the file names one, the report."""
    try:
        spec = load_sweep(sweep_file, overrides or ())
        if dry_run:
            jobs = plan_sweep(spec, sweep_file)
            table = Table(title=f"{spec.name}: {len(jobs)} job(s)")
            for column in ("experiment", "variant", "seed", "state", "run directory"):
                table.add_column(column)
            for job in jobs:
                stale = job.outdated()
                state = (
                    f"to evaluate again ({', '.join(stale)}: older protocol)"
                    if stale
                    else "complete"
                    if job.complete()
                    else "archived (restored when the sweep runs)"
                    if job.archived()
                    else "to run"
                )
                table.add_row(
                    job.experiment,
                    job.variant or "-",
                    str(job.seed),
                    state,
                    escape(str(job.run_dir)),
                )
            console.print(table)
            return
        if partial:
            outcome = report_so_far(spec, sweep_file, report=_say)
            _say(f"{len(outcome.skipped)} of {len(outcome.jobs)} job(s) complete")
            for path in outcome.written:
                _say(f"wrote {path}")
            return
        outcome = run_sweep(spec, sweep_file, report=_say, reevaluate=reevaluate)
    except SpecError as err:
        raise fail(err) from None
    except SweepError as err:
        raise fail(str(err)) from None
    except SweepStopped as err:
        _say(str(err))
        raise typer.Exit(code=128 + err.signal) from None
    if outcome.failures:
        for job, error in outcome.failures:
            _say(f"failed: {job.label}: {error}")
        raise fail(
            f"{len(outcome.failures)} of {len(outcome.jobs)} job(s) failed; run the same command "
            "again to retry them (complete jobs are skipped)"
        )
    done, before = len(outcome.jobs), len(outcome.skipped)
    _say(f"{done} job(s) complete ({before} were already); results: {outcome.results}")
    for path in outcome.written:
        _say(f"wrote {path}")
