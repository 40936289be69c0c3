"""`mtv data index URL_PATTERN...`: sidecar indexes of tar shards."""

from __future__ import annotations

from typing import Annotated

import typer
from mtv_cli.output import console, errors
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtv.data.shards import TarShardSource
from mtv.specs.limits import DEFAULT_INDEX_THREADS

data_app = typer.Typer(help="Data sources: shard indexes.", no_args_is_help=True)

_SHOWN_PROBLEMS = 20


@data_app.command("index")
def data_index(
    urls: Annotated[
        list[str],
        typer.Argument(help="shard paths or fsspec URLs; brace ranges such as {0000..0099} expand"),
    ],
    threads: Annotated[
        int, typer.Option("--threads", min=1, help="shards listed at once")
    ] = DEFAULT_INDEX_THREADS,
    force: Annotated[
        bool, typer.Option("--force", help="rewrite sidecars that still match their shard")
    ] = False,
) -> None:
    """Write `SHARD.tar.idx.json` beside every shard that lacks one or whose one is stale, so
    that sources build their key index without scanning the shards."""
    problems: list[tuple[str, str]] = []
    source = TarShardSource(
        urls, on_problem=lambda where, why: problems.append((where, why)), index_threads=threads
    )
    columns = (TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    bar = Progress(*columns, console=console, transient=True, disable=not console.is_terminal)
    with bar as progress:
        task = progress.add_task("index", total=len(source.shards))
        result = source.write_sidecars(force, progress=lambda n: progress.advance(task, n))
    for where, why in problems[:_SHOWN_PROBLEMS]:
        errors.print(f"skipped {escape(where)}: {escape(why)}", highlight=False, soft_wrap=True)
    if len(problems) > _SHOWN_PROBLEMS:
        errors.print(f"... and {len(problems) - _SHOWN_PROBLEMS} more", highlight=False)
    console.print(
        f"{result.shards} shard(s), {result.samples} usable sample(s): wrote {result.written} "
        f"sidecar(s), {result.kept} already up to date; {len(problems)} problem(s), "
        f"{len(result.damaged)} damaged shard(s)",
        highlight=False,
    )
