"""Evaluation of frozen encoders: metrics, linear probes, the `mini` suite, public benchmark
suites, and the results files of a run (`RUN/eval/<suite>.parquet` and `.json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import polars as pl
from pydantic import ValidationError

from mtv.eval.mini import EVALUATORS, run_mini_suite
from mtv.eval.model import FrozenModel
from mtv.specs import EvalSpec
from mtv.specs.loading import format_loc

RESULT_COLUMNS = (
    "suite",
    "evaluator",
    "metric",
    "value",
    "higher_is_better",
    "step",
    "samples_seen",
)


class Evaluation(NamedTuple):
    results: pl.DataFrame  # rows of RESULT_COLUMNS
    path: Path  # the run's results file they were added to


def suite_names() -> list[str]:
    """Every suite `mtv eval --suite` accepts (the spec's `eval.suite` lists the same)."""
    return list(EvalSpec.model_fields["suite"].annotation.__args__)  # type: ignore[union-attr]


def run_suite(model: FrozenModel, settings: EvalSpec) -> pl.DataFrame:
    """Rows (suite, evaluator, metric, value, higher_is_better, step, samples_seen) of one run
    of `model` with the suite, evaluators and data that `settings` name."""
    if settings.suite == "mini":
        results = run_mini_suite(model, settings.only or None, settings.scenes)
    else:
        from mtv.eval.public import run_public_suite

        assert settings.data is not None  # EvalSpec refuses a public suite without data
        results = run_public_suite(
            model, settings.suite, settings.data, settings.only or None, settings.limit
        )
    return results.select(
        pl.lit(settings.suite).alias("suite"),
        pl.all(),
        pl.lit(model.step).alias("step"),
        pl.lit(model.samples_seen).alias("samples_seen"),
    )


def store_results(results: pl.DataFrame, run_dir: Path, suite: str) -> Path:
    """Merge `results` into `run_dir/eval/<suite>.parquet` (+ `.json`): rows of other steps
    are kept, so a run's file is its evaluation history; rows of the same step and evaluator
    are replaced. Written to a temporary file and renamed, so a crash loses nothing."""
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    path = out / f"{suite}.parquet"
    merged = results.select(RESULT_COLUMNS)
    if path.is_file():
        old = pl.read_parquet(path)
        replaced = merged.select("step", "evaluator").unique()
        kept = old.join(replaced, on=["step", "evaluator"], how="anti")
        merged = pl.concat([kept.select(RESULT_COLUMNS), merged], how="vertical_relaxed")
    merged = merged.sort("step", "evaluator", "metric", maintain_order=True)
    partial = path.with_suffix(".parquet.partial")
    merged.write_parquet(partial)
    partial.replace(path)
    json_path = path.with_suffix(".json")
    json_partial = json_path.with_suffix(".json.partial")
    json_partial.write_text(json.dumps(merged.to_dicts(), indent=1))
    json_partial.replace(json_path)
    return path


def read_results(run_dir: Path, suite: str = "mini", latest: bool = True) -> pl.DataFrame:
    """A run's stored evaluation rows; only those of its latest evaluated step when `latest`."""
    path = run_dir / "eval" / f"{suite}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {suite} results: run `mtv eval {run_dir}` first")
    frame = pl.read_parquet(path)
    return frame.filter(pl.col("step") == pl.col("step").max()) if latest else frame


def evaluate_run(
    target: str | Path,
    suite: str | None = None,
    only: list[str] | None = None,
    scenes: int | None = None,
    data: str | Path | None = None,
    limit: int | None = None,
) -> Evaluation:
    """Evaluate a run (its latest checkpoint) or one checkpoint of it, frozen, and store the
    results in the run directory. Unset arguments come from the run spec's `eval:` section."""
    model = FrozenModel.from_run(target)
    declared = model.spec.eval
    changes = {
        key: value
        for key, value in {
            "suite": suite,
            "only": only,
            "scenes": scenes,
            "data": None if data is None else str(data),
            "limit": limit,
        }.items()
        if value is not None
    }
    if "suite" in changes and changes["suite"] != declared.suite and "only" not in changes:
        changes["only"] = []  # the spec's evaluators belong to the spec's suite
    try:
        settings = EvalSpec.model_validate(declared.model_dump() | changes)
    except ValidationError as err:
        first = err.errors()[0]
        where = format_loc(("eval", *first["loc"]))
        raise ValueError(f"{where}: {first['msg']}") from None
    results = run_suite(model, settings)
    assert model.run_dir is not None  # from_run knows where the run is
    return Evaluation(results, store_results(results, model.run_dir, settings.suite))


__all__ = [
    "EVALUATORS",
    "RESULT_COLUMNS",
    "Evaluation",
    "FrozenModel",
    "evaluate_run",
    "read_results",
    "run_mini_suite",
    "run_suite",
    "store_results",
    "suite_names",
]
