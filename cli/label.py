"""`mtv label SPEC.yaml` and `mtv label check STORE`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer
from mtv_cli.output import console, errors, fail
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from mtv.data.store import LabelStore
from mtv.label.check import check_store, recorded_source
from mtv.label.pipeline import LabelSpecError, describe_source, resolve_source, run_labelling
from mtv.label.quality import label_quality
from mtv.runtime.distributed import init_from_environment
from mtv.specs import SpecError
from mtv.specs.label import LabelSpec
from mtv.specs.loading import load_yaml_model
from mtv.world.corpus import GroundTruth, WorldCorpus


class _LabelGroup(TyperGroup):
    """`mtv label SPEC.yaml` runs the job; `mtv label check STORE` validates a store."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


label_app = typer.Typer(
    cls=_LabelGroup,
    help="Pseudo-labels from expert models, into a Zarr store.",
    no_args_is_help=True,
)


@label_app.command("run")
def label_run(
    spec_file: Annotated[Path, typer.Argument(help="labelling spec (YAML)")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override a field, e.g. --set batch_size=8")
    ] = None,
) -> None:
    """Label a source with the spec's experts; resumes an interrupted job. Under
    `torchrun --nproc_per_node=N` each rank labels its own chunks."""
    try:
        spec = load_yaml_model(spec_file, LabelSpec, overrides or ())
    except SpecError as err:
        raise fail(err) from None
    rank, world = init_from_environment()
    columns = (
        TextColumn(f"labelling{f' (rank {rank}/{world})' if world > 1 else ''}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} images/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=rank != 0 and world > 1) as progress:
        task = progress.add_task("label", total=None, rate="-")
        state: dict[str, Any] = {}

        def start(total: int, finished: int) -> None:
            progress.update(task, total=total, completed=finished)
            state["base"] = finished

        def advance(count: int) -> None:
            progress.advance(task, count)
            current = progress.tasks[0]
            rate = (current.completed - state.get("base", 0)) / max(current.elapsed or 0, 1e-9)
            progress.update(task, rate=f"{rate:.0f}")

        def skipped(key: str, reason: str) -> None:
            progress.console.print(f"skipped {escape(key)}: {escape(reason)}", highlight=False)

        try:
            store, stats = run_labelling(spec, rank, world, advance, skipped, start)
        except BaseException as err:
            if not progress.tasks[0].completed:
                progress.remove_task(task)  # an empty bar under the error would say nothing
            if isinstance(err, (LabelSpecError, FileNotFoundError)):
                raise fail(f"{spec_file}: {err}") from None
            raise
    seconds = ", ".join(f"{part} {value:.1f}s" for part, value in stats.seconds.items())
    console.print(
        f"labelled {stats.images} images in {stats.chunks} chunk(s) into {escape(str(store.path))}"
        f" ({len(stats.skipped)} undecodable, skipped); {seconds}",
        highlight=False,
    )


@label_app.command("check")
def label_check(
    store_path: Annotated[Path, typer.Argument(help="a label store")],
    spec_file: Annotated[
        Path | None, typer.Option("--spec", help="also check keys against this job's source")
    ] = None,
) -> None:
    """Validate a label store: read every chunk, match it against the source it labelled (the
    one it records, or --spec's) and print every bad sample by key."""
    try:
        store = LabelStore.open(store_path)
    except (FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    try:
        if spec_file is not None:
            job = load_yaml_model(spec_file, LabelSpec)
            source: Any = resolve_source(job)[0]
            source_name = describe_source(job.source)
        else:
            source, source_name = recorded_source(store)
    except SpecError as err:
        raise fail(err) from None
    except (FileNotFoundError, ValueError, LabelSpecError) as err:
        if spec_file is not None or not isinstance(err, (FileNotFoundError, LabelSpecError)):
            raise fail(str(err)) from None
        errors.print(
            f"[yellow]note[/]: the source was not checked: {escape(str(err))}",
            highlight=False,
            soft_wrap=True,
        )
        source, source_name = None, ""
    problems = check_store(store, source, source_name)
    fatal = [p for p in problems if p.fatal]
    for problem in problems:
        tag = "[red]bad[/]" if problem.fatal else "[yellow]note[/]"
        errors.print(f"{tag} {escape(str(problem))}", highlight=False, soft_wrap=True)
    checked = f"against {source_name}" if source is not None else "source not checked"
    summary = f"{len(store.keys)} samples, kinds {', '.join(store.attrs['kinds'])}, {checked}"
    if fatal:
        errors.print(
            f"{escape(str(store_path))}: {len(fatal)} problem(s); {escape(summary)}",
            highlight=False,
        )
        raise typer.Exit(code=1)
    console.print(f"[green]ok[/] {escape(str(store_path))}: {escape(summary)}", highlight=False)


@label_app.command("quality")
def label_quality_command(
    store_path: Annotated[Path, typer.Argument(help="a label store of mini-world images")],
    world: Annotated[
        Path, typer.Option("--world", help="the mini-world corpus the store labels")
    ] = Path("data/miniworld"),
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="measure the first N samples only")
    ] = None,
) -> None:
    """Measure pseudo-labels against the mini-world's exact ground truth, as the experts'
    papers report them: depth AbsRel and delta1 after scale-and-shift alignment, boxes as recall
    and precision at IoU 0.5 with the share of right entity names."""
    try:
        store = LabelStore.open(store_path)
        truth = GroundTruth(WorldCorpus.open(world).groundtruth)
        keys = store.keys[:limit] if limit else None
        missing = [k for k in (keys or store.keys) if k not in truth]
        if missing:
            raise ValueError(
                f"{store_path} labels {len(missing)} sample(s) the corpus at {world} does not "
                f"have (first: {missing[0]!r}): a store of another corpus"
            )
        measured = label_quality(store, truth, keys)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise fail(str(err)) from None
    console.print(f"{escape(str(store_path))} against {escape(str(world))}", highlight=False)
    table = Table()
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in measured.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
