"""`mtv eval RUN_DIR|CHECKPOINT`, `mtv synergy RUN_DIR...` and `mtv scaling RUN_DIR...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from mtv_cli.output import console, fail
from rich.markup import escape
from rich.table import Table

from mtv.analysis import MissingRuns, task_groups
from mtv.analysis.report import scaling_report, synergy_report
from mtv.analysis.synergy import synergy_wide
from mtv.eval import evaluate_run, suite_names
from mtv.runs.checkpoint import CheckpointError
from mtv.specs import SpecError, load_run_spec


def _table(frame: pl.DataFrame, title: str) -> Table:
    table = Table(title=title)
    for column in frame.columns:
        justify = "right" if frame[column].dtype.is_numeric() else "left"
        table.add_column(column, justify=justify, overflow="fold")  # long metric names wrap
    for row in frame.iter_rows():
        table.add_row(*(_cell(value) for value in row))
    return table


def _cell(value: object) -> str:
    if value is None:
        return "-"  # undefined (e.g. a gain over a baseline that lacks the metric)
    return f"{value:.4f}" if isinstance(value, float) else escape(str(value))


def _results_table(results: pl.DataFrame) -> Table:
    """One row per metric with its two reference points beside it."""
    table = Table(
        caption="trivial: chance, majority class or constant depth; "
        "random init: the same model untrained (same seed)",
    )
    table.add_column("evaluator", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    for column in ("value", "trivial", "random init"):
        table.add_column(column, justify="right")
    table.add_column("better")
    for row in results.iter_rows(named=True):
        table.add_row(
            row["evaluator"],
            row["metric"],
            _cell(row["value"]),
            _cell(row["trivial"]),
            _cell(row["random_init"]),
            "higher" if row["higher_is_better"] else "lower",
        )
    return table


def _print_wide(frame: pl.DataFrame, title: str, width: int = 14) -> None:
    """A table with many metric columns as several tables of the columns that fit the terminal,
    each repeating the first (key) column."""
    key, *columns = frame.columns
    per_table = max(1, (console.width - 24) // (width + 3))
    for start in range(0, len(columns), per_table):
        part = frame.select(key, *columns[start : start + per_table])
        suffix = f" ({start // per_table + 1}/{-(-len(columns) // per_table)})"
        console.print(_table(part, title + (suffix if len(columns) > per_table else "")))


def evaluate(
    target: Annotated[
        Path, typer.Argument(help="a run directory (its latest checkpoint) or one checkpoint")
    ],
    suite: Annotated[
        str | None, typer.Option("--suite", help=f"one of: {', '.join(suite_names())}")
    ] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="evaluators to run")] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="the benchmark's root (public suites); held-out image-text data (source "
            "suite): a folder, .parquet or .tar",
        ),
    ] = None,
    classes: Annotated[
        Path | None,
        typer.Option("--classes", help="source suite: class names, one a line (zero-shot)"),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="source suite: the eval data's label store (depth)"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="read at most N benchmark samples")
    ] = None,
    scenes: Annotated[
        int | None, typer.Option("--scenes", min=4, help="held-out scenes (mini suite)")
    ] = None,
) -> None:
    """Evaluate a trained encoder (frozen, eval mode) and add the results to its run.

    Unset options come from the run spec's `eval:` section (suite `mini` by default)."""
    try:
        with console.status(f"evaluating {escape(str(target))} (and its random-init reference)"):
            results, path = evaluate_run(
                target, suite, only, scenes, data, limit, classes=classes, labels=labels
            )
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        raise fail(str(err)) from None
    name, step = results["suite"][0], results["step"][0]
    console.print(
        f"{escape(str(target))} — {name} suite (step {step})", highlight=False, soft_wrap=True
    )
    console.print(_results_table(results))
    console.print(f"results: {escape(str(path))}", highlight=False, soft_wrap=True)


def synergy(
    runs: Annotated[
        list[Path], typer.Argument(help="evaluated run directories: every task set, any seeds")
    ],
    baseline: Annotated[
        list[Path] | None,
        typer.Option(
            "--baseline",
            help="VL-only run(s), one per seed (they may also be given among RUNS)",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="where tables and heatmaps go")] = Path(
        "synergy"
    ),
    suite: Annotated[str, typer.Option("--suite")] = "mini",
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", help="only these evaluator/metric columns (repeatable)"),
    ] = None,
) -> None:
    """The ablation ladder (Table 3) and the task-synergy matrix (Table 4, Eq. 4).

    Runs of the same task set with different `runtime.seed` are seeds: every value is then the
    mean ± standard error over seeds, differences are paired by seed, and those within two
    standard errors of zero are marked n.s.; synergy is given only where a single task's gain
    stands out of its noise."""
    try:
        for path in baseline or []:
            kinds = [t.kind for t in load_run_spec(path).tasks]
            if task_groups(kinds):
                raise ValueError(
                    f"--baseline {path}: a baseline is a VL-only run; this one also trains "
                    f"{', '.join(task_groups(kinds))}"
                )
        paths = list(dict.fromkeys([*(baseline or []), *runs]))
        ladder, matrix, files = synergy_report(paths, suite, out, metric)
    except (MissingRuns, FileNotFoundError, ValueError, SpecError) as err:
        raise fail(err if isinstance(err, SpecError) else str(err)) from None
    seeds = matrix["seeds"].max() if "seeds" in matrix.columns else 1
    if not seeds or seeds < 2:
        console.print(
            "one seed per task set: differences cannot be told from noise (run more seeds, "
            "e.g. with `mtv sweep`)",
            highlight=False,
        )
    if ladder is not None:
        _print_wide(ladder, "ablation ladder (Table 3; increments over the previous row)")
    _print_wide(synergy_wide(matrix), "task synergy (Table 4, Eq. 4), by metric and average")
    for path in files:
        console.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)


def scaling(
    runs: Annotated[list[Path], typer.Argument(help="evaluated run directories")],
    out: Annotated[Path, typer.Option("--out", help="where tables and plots go")] = Path("scaling"),
    suite: Annotated[str, typer.Option("--suite")] = "mini",
) -> None:
    """Each metric against samples seen and against encoder size, across runs."""
    try:
        tables, files = scaling_report(runs, suite, out)
    except (FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    for axis, table in tables.items():
        console.print(_table(table, f"metrics against {axis.replace('_', ' ')}"))
    for path in files:
        console.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)
