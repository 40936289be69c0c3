"""`mtv export RUN --format hf-siglip OUT`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mtv_cli.output import console, fail
from rich.markup import escape
from rich.table import Table

from mtv.runs.checkpoint import CheckpointError
from mtv.runs.export import export_run
from mtv.specs import SpecError

FORMATS = {"hf-siglip": export_run}


def export(
    source: Annotated[
        Path, typer.Argument(help="a run directory (its latest checkpoint) or one checkpoint")
    ],
    out: Annotated[Path, typer.Argument(help="the directory to write")],
    fmt: Annotated[str, typer.Option("--format", help="hf-siglip")] = "hf-siglip",
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="tokenizer.json (default: the run's)")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="write into a non-empty OUT (replacing its files)")
    ] = False,
) -> None:
    """Export a trained run for other libraries (hf-siglip: transformers' SiglipModel)."""
    if fmt not in FORMATS:
        raise fail(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    try:
        result = FORMATS[fmt](source, out, tokenizer, overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError, CheckpointError) as err:
        raise fail(str(err)) from None
    except SpecError as err:
        raise fail(err) from None
    console.print(
        f"exported {escape(str(result.checkpoint))} (step {result.step}) as "
        f"{result.architecture} to {escape(str(result.out))}",
        highlight=False,
        soft_wrap=True,
    )
    table = Table()
    table.add_column("file")
    table.add_column("size", justify="right")
    for path in result.files:
        table.add_row(escape(path.name), f"{path.stat().st_size / 1e3:,.1f} kB")
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note[/]: {escape(note)}", highlight=False, soft_wrap=True)
    console.print(
        f"load with transformers.{result.architecture}.from_pretrained({str(out)!r})",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
