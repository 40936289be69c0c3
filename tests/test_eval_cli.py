"""`mtv eval` on a trained run prints every metric of the mini suite; `mtv synergy` over
smoke-sized runs of the whole ladder prints both tables and writes the heatmap."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.eval import EVALUATORS, evaluate_run
from mtv.specs import load_spec
from mtv.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SETS = {
    "vl": "[vl]",
    "vl_ssl": "[vl, distill, masked, koleo]",
    "vl_ground": "[vl, ground]",
    "vl_depth": "[vl, depth]",
    "vl_ssl_ground": "[vl, distill, masked, koleo, ground]",
    "vl_ssl_depth": "[vl, distill, masked, koleo, depth]",
    "vl_ground_depth": "[vl, ground, depth]",
    "vl_ssl_ground_depth": "[vl, distill, masked, koleo, ground, depth]",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ladder")
    out = {}
    for name, tasks in SETS.items():
        spec = load_spec(
            ROOT / "experiments" / "smoke.yaml",
            [
                f"tasks={tasks}",
                f"data.source.root={root / 'mini'}",
                "schedule.steps=3",
                "data.loader.workers=0",
                f"name={name}",
            ],
        )
        Trainer(spec, root / name, report=lambda m: None).run()
        out[name] = root / name
    return out


def test_eval_prints_every_metric_of_the_mini_suite(runs: dict[str, Path]) -> None:
    run = runs["vl_ssl_ground_depth"]
    result = runner.invoke(app, ["eval", str(run), "--scenes", "10"])
    assert result.exit_code == 0, result.output
    stored = pl.read_parquet(run / "eval" / "mini.parquet")
    assert set(stored["evaluator"]) == set(EVALUATORS)
    for evaluator, metric in stored.select("evaluator", "metric").iter_rows():
        assert evaluator in result.output and metric in result.output
    assert stored["value"].is_finite().all() and (stored["step"] == 3).all()


def test_eval_of_a_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_synergy_over_the_ladder_prints_both_tables_and_writes_the_heatmap(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    for run in runs.values():
        evaluate_run(run, only=["retrieval", "depth_probe"], scenes=6)
    others = [str(p) for name, p in runs.items() if name != "vl"]
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        ["synergy", *others, "--baseline", str(runs["vl"]), "--out", str(out)],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert "ablation ladder" in result.output and "task synergy" in result.output
    assert "Absolute gain" in result.output and "average" in result.output
    assert (out / "synergy.png").stat().st_size > 0
    matrix = pl.read_parquet(out / "synergy.parquet")
    assert {(a, b) for a, b in matrix.select("task_a", "task_b").iter_rows()} == {
        ("depth", "ground"),
        ("depth", "ssl"),
        ("ground", "ssl"),
    }
    partial = runner.invoke(
        app, ["synergy", str(runs["vl_ssl"]), "--baseline", str(runs["vl"]), "--out", str(out)]
    )
    assert (
        partial.exit_code == 2
        and "missing runs" in partial.output
        and "VL + Ground" in partial.output
    )
