"""`mtv run EXPERIMENT.yaml`: train, with a live view of the losses."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from mtv_cli.output import console, fail
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from mtv.data.loader import TooManyBadSamples
from mtv.graph.experiment import load_experiment
from mtv.runs.checkpoint import CheckpointError
from mtv.specs import SpecError
from mtv.train import (
    DataPreparationError,
    Interrupted,
    Trainer,
    TrainingError,
    default_run_dir,
)
from mtv.train.metrics import MetricsHistoryError


class _View:
    """Live table on a terminal; a line every `log_every` steps otherwise."""

    def __init__(self, total: int, log_every: int):
        self.total, self.log_every, self.started = total, log_every, time.perf_counter()
        self.first: int | None = None
        self.live = Live(console=console, refresh_per_second=4) if console.is_terminal else None

    def _eta(self, step: int) -> str:
        # Timed from the first step this process trained, not from start-up: data preparation
        # (rendering, labelling, a resume's loading) would otherwise inflate the estimate.
        if self.first is None:
            self.first, self.started = step, time.perf_counter()
            return "-"
        done = step - self.first
        left = (time.perf_counter() - self.started) / max(done, 1) * (self.total - step)
        return time.strftime("%H:%M:%S", time.gmtime(max(left, 0)))

    def __call__(self, row: dict[str, Any]) -> None:
        step = row["step"]
        losses = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("loss/")}
        if self.live is not None:
            table = Table(title=f"step {step}/{self.total}  eta {self._eta(step)}")
            for name in ("total", *losses, "images/s", "data wait"):
                table.add_column(name, justify="right")
            table.add_row(
                f"{row.get('loss', float('nan')):.4f}",
                *(f"{v:.4f}" for v in losses.values()),
                f"{row.get('images_per_s', 0):.0f}",
                f"{100 * row.get('data_wait_fraction', 0):.0f}%",
            )
            self.live.update(table)
        elif step % self.log_every == 0 or step == self.total or step == 1:
            parts = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
            total = row.get("loss", float("nan"))
            console.print(
                f"step {step}/{self.total} loss {total:.3f} | {parts} | "
                f"{row.get('images_per_s', 0):.0f} img/s | wait "
                f"{100 * row.get('data_wait_fraction', 0):.0f}% | eta {self._eta(step)}",
                highlight=False,
                soft_wrap=True,
            )


def run(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML file")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override a field, e.g. --set optim.lr=1e-3")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="run directory (default runs/NAME)")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the latest checkpoint")
    ] = False,
) -> None:
    """Train an experiment. Renders and labels the mini-world on first use."""
    try:
        spec = load_experiment(experiment, overrides or ()).spec
    except SpecError as err:
        raise fail(err) from None
    run_dir = out or default_run_dir(spec)
    view = _View(spec.schedule.steps, spec.output.log_every)

    def report(message: str) -> None:
        console.print(escape(message), highlight=False, soft_wrap=True)

    try:
        trainer = Trainer(spec, run_dir, resume=resume, report=report, on_step=view)
        if trainer.is_main:
            console.print(f"run directory: {escape(str(run_dir))}", highlight=False, soft_wrap=True)
        if view.live is not None:
            with view.live:
                summary = trainer.run()
        else:
            summary = trainer.run()
    except Interrupted as err:
        again = " ".join(
            ["mtv run", shlex.quote(str(experiment)), "--out", shlex.quote(str(run_dir))]
            + [f"--set {shlex.quote(o)}" for o in overrides or ()]
            + ["--resume"]
        )
        console.print(f"{escape(str(err))}\nresume with: {escape(again)}", highlight=False)
        raise typer.Exit(code=130 if err.signal == "SIGINT" else 143) from None
    except (
        TrainingError,
        DataPreparationError,
        TooManyBadSamples,
        CheckpointError,
        MetricsHistoryError,
    ) as err:
        raise fail(str(err)) from None
    if not trainer.is_main:  # one voice per run: rank 0 speaks for all
        return
    losses = ", ".join(
        f"{k.split('/', 1)[1] if '/' in k else 'total'} {v:.4f}" for k, v in summary.last.items()
    )
    console.print(
        f"finished {summary.steps} steps in {summary.seconds:.0f} s; final losses: {losses}\n"
        f"run directory: {escape(str(summary.run_dir))}\n"
        f"metrics: {escape(str(summary.run_dir / 'metrics.parquet'))}",
        highlight=False,
        soft_wrap=True,
    )
