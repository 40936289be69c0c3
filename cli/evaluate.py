"""`mtv eval RUN_DIR` and `mtv synergy RUN_DIR...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtv.analysis import MissingRuns
from mtv.analysis.report import synergy_report
from mtv.eval import evaluate_run

console = Console()
errors = Console(stderr=True)


def _error(message: str) -> typer.Exit:
    errors.print(f"[bold red]error[/]: {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _table(frame: pl.DataFrame, title: str) -> Table:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(column, justify="right" if frame[column].dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else escape(str(v)) for v in row))
    return table


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (its latest checkpoint)")],
    suite: Annotated[str, typer.Option("--suite", help="evaluation suite")] = "mini",
    only: Annotated[list[str] | None, typer.Option("--only", help="evaluators to run")] = None,
    scenes: Annotated[int, typer.Option("--scenes", min=4, help="held-out scenes")] = 120,
) -> None:
    """Evaluate a trained encoder (frozen, eval mode) and store the results in the run."""
    try:
        results = evaluate_run(run_dir, suite, only, scenes)
    except (FileNotFoundError, ValueError) as err:
        raise _error(str(err)) from None
    console.print(
        _table(results.drop("step"), f"{run_dir} — {suite} suite (step {results['step'][0]})")
    )
    console.print(
        f"results: {escape(str(Path(run_dir) / 'eval' / f'{suite}.parquet'))}",
        highlight=False,
        soft_wrap=True,
    )


def synergy(
    runs: Annotated[list[Path], typer.Argument(help="evaluated run directories")],
    baseline: Annotated[Path, typer.Option("--baseline", help="the VL-only run")],
    out: Annotated[Path, typer.Option("--out", help="where tables and heatmaps go")] = Path(
        "synergy"
    ),
    suite: Annotated[str, typer.Option("--suite")] = "mini",
) -> None:
    """The ablation ladder (Table 3) and the task-synergy matrix (Table 4, Eq. 4)."""
    try:
        ladder, matrix, files = synergy_report([baseline, *runs], suite, out)
    except (MissingRuns, FileNotFoundError, ValueError) as err:
        raise _error(str(err)) from None
    if ladder is not None:
        console.print(_table(ladder, "ablation ladder (increments over the previous row)"))
    console.print(_table(matrix, "task synergy (Eq. 4), by metric and average"))
    for path in files:
        console.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)
