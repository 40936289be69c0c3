"""`mtv world ...`: the built-in mini-world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mtv_cli.output import console, fail
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtv.specs.experiment import MIN_CAMERA_DISTANCE
from mtv.world.corpus import prepare_output, render_corpus
from mtv.world.scene import CAMERA_DISTANCE

world_app = typer.Typer(help="The built-in procedural mini-world.", no_args_is_help=True)


@world_app.command("render")
def world_render(
    out: Annotated[
        Path, typer.Argument(help="output folder (shards/, groundtruth.zarr, world.json)")
    ],
    n: Annotated[int, typer.Option("--n", min=1, help="number of scenes")] = 1000,
    size: Annotated[int, typer.Option("--size", min=8, max=1024, help="image side in pixels")] = 64,
    views: Annotated[int, typer.Option("--views", min=1, help="cameras per scene")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="world seed")] = 0,
    near: Annotated[
        float,
        typer.Option(
            "--near", min=MIN_CAMERA_DISTANCE, help="cameras' least distance to the scene centre"
        ),
    ] = CAMERA_DISTANCE[0],
    far: Annotated[
        float,
        typer.Option(
            "--far", min=MIN_CAMERA_DISTANCE, help="cameras' greatest distance to the centre"
        ),
    ] = CAMERA_DISTANCE[1],
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="images per shard")] = 1000,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="replace a non-empty OUT, only if mtv rendered it (MTV_CORPUS.json)"
        ),
    ] = False,
) -> None:
    """Render a corpus of mini-world images with exact ground truth."""
    columns = (
        TextColumn("rendering"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} images/s"),
        TimeRemainingColumn(),
    )
    if near > far:
        raise fail(f"--near {near} is beyond --far {far}")
    try:
        prepare_output(out, overwrite)
    except FileExistsError as err:
        raise fail(str(err)) from None
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("render", total=n * views, rate="-")

        def advance(count: int) -> None:
            progress.advance(task, count)
            elapsed = progress.tasks[0].elapsed or 1e-9
            progress.update(task, rate=f"{progress.tasks[0].completed / elapsed:.0f}")

        corpus = render_corpus(
            out,
            n,
            size=size,
            views=views,
            seed=seed,
            shard_size=shard_size,
            progress=advance,
            camera_distance=(near, far),
        )
    manifest = corpus.manifest
    console.print(
        f"wrote {manifest['images']} images ({manifest['scenes']} scenes x {views} views) to "
        f"{escape(str(out))}: {len(manifest['shards'])} shard(s), groundtruth.zarr, world.json "
        f"in {manifest['seconds']:.1f} s",
        highlight=False,
    )
