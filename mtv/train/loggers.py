"""Experiment tracking (`output.loggers`): a run's metrics and evaluations, also sent to
TensorBoard, W&B or MLflow. `RUN/metrics.parquet` stays the record that resume and the analysis
read; the trackers show the same numbers at the same steps, so they join with it on `step`.

Step numbers: a training row is logged at its `step`, 1-based as in metrics.parquet (row k is
the k-th optimiser step, its losses computed from the weights after k - 1 updates); an
evaluation at the number of steps done, as in `eval/<suite>.parquet` and the checkpoint names
(evaluation k measures the weights after k updates). So at one x, a training row and an
evaluation are one update apart."""

from __future__ import annotations

import importlib
import json
import math
import numbers
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import polars as pl

from mtv.eval.figures import plot_held_out_scenes
from mtv.eval.model import FrozenModel
from mtv.specs.experiment import ExperimentSpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Outcome = Literal["finished", "failed", "interrupted"]
Report = Callable[[str], None]
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # extra: same name
# MLflow's file store keeps a metric as a file and a group of them (`loss/<task>`) as a folder:
# the totals that name a group are `<group>/total` there.
MLFLOW_TOTALS = {"loss": "loss/total", "grad_norm": "grad_norm/total"}


class LoggerError(RuntimeError):
    """A tracker that `output.loggers` names cannot start (the message says what to do)."""


class Logger(Protocol):
    """One tracker. `figures`: whether `log_figure` keeps anything (figures are drawn only then)."""

    name: str
    figures: bool

    def log_scalars(self, step: int, values: dict[str, float]) -> None: ...

    def log_figure(self, step: int, name: str, figure: Figure) -> None: ...

    def close(self, outcome: Outcome = "finished") -> None: ...


def check_available(names: Iterable[str]) -> None:
    """Import each named tracker's package, or raise one `LoggerError` naming the extra to install:
    called before the run directory is touched, so a run stops before it trains, not mid-run."""
    missing: dict[str, ImportError] = {}
    for name in (n for n in names if n in PACKAGES):  # parquet is part of mtv
        try:
            importlib.import_module(PACKAGES[name])
        except ImportError as err:
            missing[name] = err
    if why := "; ".join(f"{name}: {err}" for name, err in missing.items()):
        raise LoggerError(
            f"output.loggers names {', '.join(missing)}, which cannot be imported ({why}): "
            f"pip install 'mtv[{','.join(missing)}]' (all trackers: 'mtv[tracking]'), or take "
            "it out of output.loggers"
        )


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row, without its step (flags and names are not curves)."""
    return {
        key: float(value)
        for key, value in row.items()
        if key != "step"
        and isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


def eval_scalars(frame: pl.DataFrame) -> dict[str, float]:
    """Evaluation results as `eval/<suite>/<evaluator>/<metric>` -> value (finite ones)."""
    rows = frame.select("suite", "evaluator", "metric", "value").rows()
    return {
        f"eval/{s}/{e}/{m}": float(v) for s, e, m, v in rows if v is not None and math.isfinite(v)
    }


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """A spec dump as `a.b.c` -> text (MLflow params are flat strings). Lists of mappings (the
    tasks) are indexed by position; a list of plain values stays one JSON value."""
    if isinstance(tree, list) and any(isinstance(v, dict) for v in tree):
        tree = dict(enumerate(tree))
    if not isinstance(tree, dict):
        return {prefix: tree if isinstance(tree, str) else json.dumps(tree)}
    out: dict[str, str] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


class _ScalarsOnly:
    """W&B and MLflow here keep the eval scalars; figures go to TensorBoard only."""

    figures = False

    def log_figure(self, step: int, name: str, figure: Figure) -> None:
        del step, name, figure


def _kept_id(path: Path, resumed: bool) -> str | None:
    """The tracker run id kept in the run directory, on a resume (a new run: a new tracker run)."""
    return path.read_text().strip() if resumed and path.is_file() else None


class TensorBoardLogger:
    name, figures = "tensorboard", True

    def __init__(self, spec: ExperimentSpec, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides what earlier writers logged at or after this step. Rows
        # are numbered 1..N, so a resume from checkpoint step-K repeats steps K+1.. (its rows
        # and evaluations up to K stay); a new run (K = 0) replaces everything.
        del spec
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_figure(self, step: int, name: str, figure: Figure) -> None:
        self.writer.add_figure(name, figure, step, close=False)

    def close(self, outcome: Outcome = "finished") -> None:
        self.writer.close()


class WandbLogger(_ScalarsOnly):
    name = "wandb"

    def __init__(self, spec: ExperimentSpec, run_dir: Path, resumed: bool):
        import wandb

        id_file = run_dir / "wandb-id.txt"
        # The user's WANDB_MODE / WANDB_PROJECT win (wandb reads them when these are not given);
        # by default nothing leaves the machine: `wandb sync RUN/wandb/offline-run-*` uploads.
        defaults = {"mode": "offline", "project": "mtv"}
        options = {k: v for k, v in defaults.items() if f"WANDB_{k.upper()}" not in os.environ}
        self.run = wandb.init(
            dir=str(run_dir),
            name=spec.name,
            config=spec.model_dump(mode="json"),
            id=_kept_id(id_file, resumed),
            resume="allow",
            # console="off": the CLI's live table redraws the terminal; captured, it is noise.
            settings=wandb.Settings(console="off", quiet=True),
            **options,
        )
        id_file.write_text(self.run.id + "\n")

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, outcome: Outcome = "finished") -> None:
        self.run.finish(exit_code=0 if outcome == "finished" else 1)


class MlflowLogger(_ScalarsOnly):
    name = "mlflow"

    def __init__(self, spec: ExperimentSpec, run_dir: Path, resumed: bool, report: Report):
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        if "MLFLOW_TRACKING_URI" not in os.environ:
            # MLflow 3 refuses its file store unless asked: the one that needs no server nor DB.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client, self.metric = MlflowClient(uri), Metric
        id_file = run_dir / "mlflow-run-id.txt"
        run_id, known = _kept_id(id_file, resumed), {}
        if run_id is not None:
            try:
                known = self.client.get_run(run_id).data.params
            except MlflowException as err:
                raise LoggerError(
                    f"{id_file} names MLflow run {run_id}, which {uri} does not have "
                    f"({err.message}); delete the file to log the resumed run to a new one"
                ) from None
            self.client.update_run(run_id, status="RUNNING")
        else:
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "mtv")
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else None
            experiment_id = experiment_id or self.client.create_experiment(experiment)
            run_id = self.client.create_run(experiment_id, run_name=spec.name).info.run_id
            id_file.write_text(run_id + "\n")
        self.run_id = run_id
        params = {_key(k): v for k, v in flatten(spec.model_dump(mode="json")).items()}
        # MLflow params cannot change: a resume keeps the first values (spec.yaml has its own).
        if changed := sorted(k for k, v in params.items() if known.get(k, v) != v):
            report(f"mlflow keeps the params this run started with; changed since: {changed}")
        new = [Param(k, v) for k, v in params.items() if k not in known]
        self.client.log_batch(run_id, params=new)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self.metric(_key(k), v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, outcome: Outcome = "finished") -> None:
        status = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}[outcome]
        self.client.set_terminated(self.run_id, status=status)


def _key(name: str) -> str:
    """A name MLflow takes (word characters, `-./` and spaces): `grad_cos/a~b` -> `grad_cos/a_b`."""
    return re.sub(r"[^\w\-./ ]", "_", MLFLOW_TOTALS.get(name, name))


class Loggers:
    """The run's trackers (none on ranks > 0). One that fails mid-run is reported and dropped, not
    allowed to end a long run: metrics.parquet still has every step."""

    def __init__(self, loggers: Sequence[Logger] = (), report: Report = lambda _: None):
        self.loggers, self.report = list(loggers), report

    def _each(self, what: str, call: Callable[[Logger], None]) -> None:
        for logger in list(self.loggers):
            try:
                call(logger)
            except Exception as err:
                self.loggers.remove(logger)
                self.report(
                    f"warning: {logger.name} failed to {what} ({type(err).__name__}: {err}); "
                    f"no more {logger.name} logging in this run"
                )

    def log_row(self, row: Mapping[str, Any]) -> None:
        """One metrics row, at its own `step`."""
        values, step = scalars(row), int(row["step"])
        self._each(f"log step {step}", lambda logger: logger.log_scalars(step, values))

    def log_eval(self, step: int, frame: pl.DataFrame, model: FrozenModel | None = None) -> None:
        """Evaluation results after `step` steps; with `model`, also the depth and patch-feature
        PCA figure of held-out mini-world scenes, drawn only when a tracker keeps figures."""
        values = eval_scalars(frame)
        self._each(f"log eval {step}", lambda logger: logger.log_scalars(step, values))
        if model is None or not any(logger.figures for logger in self.loggers):
            return
        import matplotlib.pyplot as plt

        try:
            figure = plot_held_out_scenes(model)
        except Exception as err:  # a figure is a nicety: the run goes on without it
            self.report(f"warning: the eval figure failed ({type(err).__name__}: {err})")
            plt.close("all")
            return
        if figure is None:  # nothing to draw the depth against
            return
        self._each("log a figure", lambda lg: lg.log_figure(step, "eval/depth_and_pca", figure))
        plt.close(figure)

    def close(self, outcome: Outcome = "finished") -> None:
        self._each("close", lambda logger: logger.close(outcome))
        self.loggers.clear()


def open_loggers(
    spec: ExperimentSpec, run_dir: Path, start_step: int, report: Report = lambda _: None
) -> Loggers:
    """The trackers of `spec.output.loggers` for a run from `start_step` (> 0: a resume, in the
    same TensorBoard folder, W&B run and MLflow run). `LoggerError` if one cannot start."""
    resumed, group = start_step > 0, Loggers(report=report)
    try:
        for name in spec.output.loggers:
            if name == "tensorboard":
                group.loggers.append(TensorBoardLogger(spec, run_dir, start_step))
            elif name == "wandb":
                group.loggers.append(WandbLogger(spec, run_dir, resumed))
            elif name == "mlflow":
                group.loggers.append(MlflowLogger(spec, run_dir, resumed, report))
    except Exception as err:
        group.close("failed")
        if isinstance(err, LoggerError):
            raise
        raise LoggerError(f"{name} logging cannot start: {type(err).__name__}: {err}") from err
    return group
