"""`mtv`: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from mtv_cli.data import data_app
from mtv_cli.evaluate import evaluate, scaling, synergy
from mtv_cli.export import export
from mtv_cli.label import label_app
from mtv_cli.output import console, errors, fail, report, run_guarded, set_debug
from mtv_cli.run import run
from mtv_cli.sweep import sweep
from mtv_cli.world import world_app
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

import mtv
from mtv.eval import check_settings
from mtv.graph.experiment import load_experiment
from mtv.specs import SPEC_KINDS, SpecError, json_schema, spec_kind, spec_to_yaml
from mtv.specs.label import LabelSpec
from mtv.specs.loading import load_yaml_model
from mtv.sweep import load_sweep, plan_sweep

app = typer.Typer(
    name="mtv",
    help="Multi-task visual representation pretraining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
spec_app = typer.Typer(
    help="Validate, show and describe spec files (experiments, labelling jobs, sweeps).",
    no_args_is_help=True,
)
app.add_typer(spec_app, name="spec")
app.add_typer(world_app, name="world")
app.add_typer(label_app, name="label")
app.add_typer(data_app, name="data")
app.command("run")(run)
app.command("eval")(evaluate)
app.command("export")(export)
app.command("synergy")(synergy)
app.command("scaling")(scaling)
app.command("sweep")(sweep)


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a field, e.g. --set optim.lr=1e-3 (repeatable)"),
]


@app.callback(invoke_without_command=True)
def main(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="show the full traceback of an error (also: MTV_DEBUG=1)",
            envvar="MTV_DEBUG",
        ),
    ] = False,
) -> None:
    if debug:
        set_debug()
    if version:
        console.print(f"mtv {mtv.__version__}")
        raise typer.Exit()


def entry() -> None:
    """The `mtv` command: every error that reaches the top is one line (see `mtv_cli.output`)."""
    run_guarded(app)


@spec_app.command("validate")
def spec_validate(
    files: Annotated[list[Path], typer.Argument(help="experiment, label or sweep YAML files")],
    overrides: SetOption = None,
) -> None:
    """Check spec files, each recognised by its shape: experiments (fields, types, task kinds,
    labels and task conflicts), labelling jobs (`mtv label`) and sweeps (`mtv sweep`)."""
    failed = 0
    for path in files:
        try:
            kind = spec_kind(path)
            if kind == "experiment":
                experiment = load_experiment(path, overrides or ())
                check_settings(experiment.spec.eval)
                what = f"{experiment.spec.name}: {', '.join(experiment.plan.kinds)}"
            elif kind == "label":
                job = load_yaml_model(path, LabelSpec, overrides or ())
                experts = [e.kind for e in (job.depth, job.boxes) if e is not None]
                what = f"labelling job: {job.source.kind} -> {job.output}, {', '.join(experts)}"
            else:
                sweep = load_sweep(path, overrides or ())
                what = f"sweep {sweep.name}: {len(plan_sweep(sweep, path))} job(s)"
        except SpecError as err:
            failed += 1
            for problem in err.problems:
                report(str(problem))
            continue
        except ValueError as err:  # the evaluation settings, against the suite table
            failed += 1
            report(f"{path}: {err}")
            continue
        console.print(
            f"[green]ok[/] {escape(str(path))} ({escape(what)})", highlight=False, soft_wrap=True
        )
    if failed:
        errors.print(f"{failed} of {len(files)} file(s) failed", highlight=False)
        raise typer.Exit(code=2)


@spec_app.command("show")
def spec_show(
    file: Annotated[Path, typer.Argument(help="an experiment YAML file")],
    overrides: SetOption = None,
) -> None:
    """Print the fully resolved spec, the task graph's plan and trainable parameters per part."""
    try:
        experiment = load_experiment(file, overrides or ())
    except SpecError as err:
        raise fail(err) from None
    console.rule(f"{escape(str(file))} (resolved)")
    console.print(Syntax(spec_to_yaml(experiment.spec), "yaml", background_color="default"))
    console.rule("task graph")
    console.print(experiment.plan.describe(), highlight=False, soft_wrap=True)
    counts = experiment.parameter_counts()
    table = Table(title="trainable parameters (EMA teacher excluded)")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    table.add_column("millions", justify="right")
    for part, count in counts.items():
        table.add_row(part, f"{count:,}", f"{count / 1e6:.2f}M")
    total = sum(counts.values())
    table.add_row("[bold]total[/]", f"[bold]{total:,}[/]", f"[bold]{total / 1e6:.1f}M[/]")
    console.print(table)


@spec_app.command("schema")
def spec_schema(
    out: Annotated[Path | None, typer.Option("--out", help="write to a file")] = None,
    kind: Annotated[
        str, typer.Option("--kind", help=f"one of: {', '.join(SPEC_KINDS)}")
    ] = "experiment",
) -> None:
    """The JSON schema of experiment, label or sweep files (editor completion, validation)."""
    if kind not in SPEC_KINDS:
        raise fail(f"--kind: {kind!r} is none of {', '.join(SPEC_KINDS)}")
    text = json.dumps(json_schema(kind), indent=2)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        console.print(f"wrote {escape(str(out))}", highlight=False)


if __name__ == "__main__":
    entry()
