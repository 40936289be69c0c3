"""Evaluation of frozen encoders: metrics, linear probes, the `mini` suite, and results files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from mtv.eval.mini import EVALUATORS, run_mini_suite
from mtv.eval.model import FrozenModel

SUITES = {"mini": EVALUATORS}


def evaluate_run(
    run_dir: str | Path, suite: str = "mini", only: list[str] | None = None, scenes: int = 120
) -> pl.DataFrame:
    """Evaluate a run's latest checkpoint and write `eval/<suite>.parquet` and `.json` into the
    run directory (columns: evaluator, metric, value, higher_is_better, step)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    run_dir = Path(run_dir)
    model = FrozenModel.from_run(run_dir)
    results = run_mini_suite(model, only, scenes).with_columns(pl.lit(model.step).alias("step"))
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    results.write_parquet(out / f"{suite}.parquet")
    (out / f"{suite}.json").write_text(json.dumps(results.to_dicts(), indent=1))
    return results


__all__ = ["EVALUATORS", "SUITES", "FrozenModel", "evaluate_run", "run_mini_suite"]
