"""A run's evaluation: a suite measured on the run's frozen model with its reference points
(the trivial predictor and the random-init model), stored as the run's evaluation history in
`RUN/eval/<suite>.parquet` (+ `.json`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import polars as pl
from pydantic import ValidationError

import mtv.eval.evaluators
import mtv.eval.suites  # noqa: F401  (registers the suites)
from mtv.eval.contract import evaluator_versions, load_data, measure, suites
from mtv.eval.model import FrozenModel
from mtv.specs import EvalSpec
from mtv.specs.loading import format_loc
from mtv.specs.paths import absolute_path

RESULT_COLUMNS = (
    "suite",
    "data",  # the data's identity (`data_identity`): rows of other data never mix
    "evaluator",
    "version",  # the evaluator's protocol version (`Evaluator.version`)
    "metric",
    "value",
    "trivial",
    "random_init",
    "higher_is_better",
    "step",
    "samples_seen",
    "evaluated_at",  # when (Unix seconds): of two evaluations of one step, the later is read
)
# The two reference points of every metric: `trivial`, what a trivial predictor scores on the
# same data (chance, the majority class, a constant depth), and `random_init`, what the same
# model scores with the weights it started from (same spec and seed, untrained).
REFERENCE_COLUMNS = ("trivial", "random_init")


class Evaluation(NamedTuple):
    results: pl.DataFrame  # rows of RESULT_COLUMNS
    path: Path  # the run's results file they were added to


def suite_names() -> list[str]:
    """Every suite `mtv eval --suite` accepts."""
    return list(suites())


def data_identity(settings: EvalSpec) -> str:
    """What the suite's data depends on (suite, scenes, data folder, limit, class list, label
    store), as one string: rows of a run's history, and its cached reference rows, are kept
    apart by it."""
    keys = ("suite", "scenes", "data", "limit", "classes", "labels")
    return json.dumps({k: getattr(settings, k) for k in keys})


def _with_version(rows: pl.DataFrame) -> pl.DataFrame:
    """Rows with their protocol version: those stored before versions were recorded are every
    protocol's first, version 1."""
    if "version" in rows.columns:
        return rows
    return rows.with_columns(pl.lit(1, dtype=pl.Int64).alias("version"))


def current_results(rows: pl.DataFrame, suite: str) -> pl.DataFrame:
    """The rows that today's evaluators of `suite` would write: of a known evaluator, at its
    current protocol version."""
    versions = evaluator_versions(suite)
    rows = _with_version(rows)
    wanted = pl.col("evaluator").replace_strict(versions, default=None, return_dtype=pl.Int64)
    return rows.filter(pl.col("version") == wanted)


def _cached_reference(
    run_dir: Path | None, settings: EvalSpec, evaluators: set[str]
) -> pl.DataFrame | None:
    path = None if run_dir is None else run_dir / "eval" / f"{settings.suite}.random_init.parquet"
    if path is None or not path.is_file():
        return None
    rows = pl.read_parquet(path).filter(pl.col("settings") == data_identity(settings))
    rows = current_results(rows, settings.suite)  # an older protocol's reference is measured again
    return rows if evaluators <= set(rows["evaluator"]) else None


def _store_reference(run_dir: Path, settings: EvalSpec, rows: pl.DataFrame) -> None:
    path = run_dir / "eval" / f"{settings.suite}.random_init.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = rows.with_columns(pl.lit(data_identity(settings)).alias("settings"))
    if path.is_file():
        old = _with_version(pl.read_parquet(path))
        kept = old.join(rows, on=["settings", "evaluator"], how="anti").select(rows.columns)
        rows = pl.concat([kept, rows])
    _write_atomically(rows, path)


def run_suite(model: FrozenModel, settings: EvalSpec, reference: bool = True) -> pl.DataFrame:
    """Rows of RESULT_COLUMNS for one run of `model` with the suite, evaluators and data that
    `settings` name. With `reference`, the same evaluators also measure `model.random_init()`
    on the same data (`random_init`; kept in the run's `eval/<suite>.random_init.parquet`, so
    a run computes it once per suite setting)."""
    data = load_data(settings, model)
    results = measure(model, settings, data)
    random_init = pl.lit(None, dtype=pl.Float64).alias("random_init")
    if reference and results.height:
        evaluators = set(results["evaluator"])
        cached = _cached_reference(model.run_dir, settings, evaluators)
        if cached is None:
            cached = measure(model.random_init(), settings, data).select(
                "evaluator", "version", "metric", pl.col("value").alias("random_init")
            )
            if model.run_dir is not None:
                _store_reference(model.run_dir, settings, cached)
        results = results.join(
            cached.select("evaluator", "metric", "random_init"),
            on=["evaluator", "metric"],
            how="left",
            maintain_order="left",
        )
    else:
        results = results.with_columns(random_init)
    return results.with_columns(
        pl.lit(settings.suite).alias("suite"),
        pl.lit(data_identity(settings)).alias("data"),
        pl.lit(time.time(), dtype=pl.Float64).alias("evaluated_at"),
        pl.lit(model.step).alias("step"),
        pl.lit(model.samples_seen).alias("samples_seen"),
    ).select(RESULT_COLUMNS)


def _write_atomically(frame: pl.DataFrame, path: Path) -> None:
    partial = path.with_suffix(path.suffix + ".partial")
    frame.write_parquet(partial)
    partial.replace(path)


def _not_replaced(old: pl.DataFrame, replaced: pl.DataFrame) -> pl.DataFrame:
    """The rows of `old` that new rows at (step, evaluator, data) `replaced` leave: those of
    another step, evaluator or data; a row without recorded data goes when its step and
    evaluator come again."""
    other = old.join(replaced, on=["step", "evaluator", "data"], how="anti")  # null never joins
    unrecorded = other.filter(pl.col("data").is_null()).join(
        replaced.select("step", "evaluator").unique(), on=["step", "evaluator"], how="anti"
    )
    return pl.concat([other.filter(pl.col("data").is_not_null()), unrecorded])


def store_results(results: pl.DataFrame, run_dir: Path, suite: str) -> Path:
    """Merge `results` into `run_dir/eval/<suite>.parquet` (+ `.json`): rows of other steps or
    other data are kept, so a run's file is its evaluation history; rows of the same step,
    evaluator and data are replaced (and rows written before the data was recorded, which
    cannot be told apart, at the same step and evaluator). Written to a temporary file and
    renamed, so a crash loses nothing."""
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    path = out / f"{suite}.parquet"
    merged = _with_dated_identity(results).select(RESULT_COLUMNS)  # rows made by hand, too
    if path.is_file():
        old = _with_dated_identity(pl.read_parquet(path), path)
        replaced = merged.select("step", "evaluator", "data").unique()
        kept = _not_replaced(old, replaced)
        merged = pl.concat([kept.select(RESULT_COLUMNS), merged], how="vertical_relaxed")
    merged = merged.sort("step", "evaluator", "metric", maintain_order=True)
    _write_atomically(merged, path)
    json_path = path.with_suffix(".json")
    json_partial = json_path.with_suffix(".json.partial")
    json_partial.write_text(json.dumps(merged.to_dicts(), indent=1))
    json_partial.replace(json_path)
    return path


def _with_dated_identity(frame: pl.DataFrame, path: Path | None = None) -> pl.DataFrame:
    """Rows as `RESULT_COLUMNS` has them: rows written before each recorded its data and time
    read with those empty (they are the oldest). A file without the reference columns (a
    pre-release mtv) is one error naming it."""
    lacking = [c for c in REFERENCE_COLUMNS if c not in frame.columns]
    if lacking:
        raise ValueError(
            f"{path or 'the results'} lack the reference columns {', '.join(lacking)} (written "
            "by a pre-release mtv): evaluate the run again with `mtv eval`"
        )
    frame = _with_version(frame)
    missing = []
    if "data" not in frame.columns:
        missing.append(pl.lit(None, dtype=pl.String).alias("data"))
    if "evaluated_at" not in frame.columns:
        missing.append(pl.lit(None, dtype=pl.Float64).alias("evaluated_at"))
    return frame.with_columns(missing) if missing else frame


def read_results(
    run_dir: Path, suite: str = "mini", latest: bool = True, data: str | None = None
) -> pl.DataFrame:
    """A run's stored evaluation rows; only those of its latest evaluated step when `latest`.
    A step evaluated on several data sets (`mtv eval --data A`, then `--data B`; another
    number of scenes) is read as one of them, never mixed: the data identity `data` names
    (`data_identity`, the `data` column), or else the step's latest evaluation."""
    path = run_dir / "eval" / f"{suite}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {suite} results: run `mtv eval {run_dir}` first")
    frame = _with_dated_identity(pl.read_parquet(path), path)
    if data is not None:
        frame = frame.filter(pl.col("data") == data)
    else:
        # Rows written before evaluations were dated sort first: any dated one is later.
        chosen = (
            frame.sort("evaluated_at", nulls_last=False, maintain_order=True)
            .group_by("step", maintain_order=True)
            .agg(pl.col("data").last().alias("chosen"))
        )
        frame = (
            frame.join(chosen, on="step", how="left", maintain_order="left")
            .filter(pl.col("data").eq_missing(pl.col("chosen")))
            .drop("chosen")
        )
    if latest:
        frame = frame.filter(pl.col("step") == pl.col("step").max())
    return frame


def evaluate_run(
    target: str | Path,
    suite: str | None = None,
    only: list[str] | None = None,
    scenes: int | None = None,
    data: str | Path | None = None,
    limit: int | None = None,
    reference: bool = True,
    classes: str | Path | None = None,
    labels: str | Path | None = None,
) -> Evaluation:
    """Evaluate a run (its latest checkpoint) or one checkpoint of it, frozen, and store the
    results in the run directory. Unset arguments come from the run spec's `eval:` section;
    `reference`: also score the random-init model (see `run_suite`)."""
    model = FrozenModel.from_run(target)
    settings = eval_settings(model.spec.eval, suite, only, scenes, data, limit, classes, labels)
    results = run_suite(model, settings, reference)
    assert model.run_dir is not None  # from_run knows where the run is
    return Evaluation(results, store_results(results, model.run_dir, settings.suite))


def eval_settings(
    declared: EvalSpec,
    suite: str | None = None,
    only: list[str] | None = None,
    scenes: int | None = None,
    data: str | Path | None = None,
    limit: int | None = None,
    classes: str | Path | None = None,
    labels: str | Path | None = None,
) -> EvalSpec:
    """What `mtv eval` evaluates with: a run spec's `eval:` section with the given settings in
    place of its own (paths made absolute from the working folder)."""
    changes = {
        key: value
        for key, value in {
            "suite": suite,
            "only": only,
            "scenes": scenes,
            # Absolute, as the spec's own paths are: the data's identity is where it is.
            "data": None if data is None else absolute_path(str(data), Path.cwd()),
            "limit": limit,
            "classes": None if classes is None else absolute_path(str(classes), Path.cwd()),
            "labels": None if labels is None else absolute_path(str(labels), Path.cwd()),
        }.items()
        if value is not None
    }
    if "suite" in changes and changes["suite"] != declared.suite and "only" not in changes:
        changes["only"] = []  # the spec's evaluators belong to the spec's suite
    try:
        return EvalSpec.model_validate(declared.model_dump() | changes)
    except ValidationError as err:
        first = err.errors()[0]
        where = format_loc(("eval", *first["loc"]))
        raise ValueError(f"{where}: {first['msg']}") from None


def outdated_evaluators(run_dir: Path, suite: str = "mini", data: str | None = None) -> list[str]:
    """The evaluators of today's `suite` whose scores in the run's latest evaluation (on the
    data identity `data`, when given) came from an older protocol version: the evaluation is
    out of date, and they must run again before it is compared with new ones. Scores of an
    evaluator that no longer exists are not today's suite and are left out of comparisons
    (`current_results`), not evaluated again. With no evaluation on `data` at all, every
    evaluator of the suite."""
    latest = read_results(run_dir, suite, data=data)
    versions = evaluator_versions(suite)
    if not latest.height:
        return sorted(versions)
    latest = latest.filter(pl.col("evaluator").is_in(list(versions)))
    stale = latest.join(current_results(latest, suite), on=["evaluator", "metric"], how="anti")
    return sorted(set(stale["evaluator"]))
