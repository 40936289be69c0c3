"""`mtv eval` on a trained run prints every metric of the mini suite; `mtv synergy` over
smoke-sized runs of the whole ladder prints both tables and writes the heatmap."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.analysis.runs import train_smoke
from mtv.eval import EVALUATORS, evaluate_run, read_results
from mtv.graph import count_parameters
from mtv.specs import load_spec
from tests.test_eval_public import write_coco

runner = CliRunner()


def test_eval_prints_every_metric_of_the_mini_suite(ladder_runs: dict[str, Path]) -> None:
    run = ladder_runs["vl_ssl_ground_depth"]
    result = runner.invoke(app, ["eval", str(run), "--scenes", "10"])
    assert result.exit_code == 0, result.output
    stored = pl.read_parquet(run / "eval" / "mini.parquet")
    assert set(stored["evaluator"]) == set(EVALUATORS)
    for evaluator, metric in stored.select("evaluator", "metric").iter_rows():
        assert evaluator in result.output and metric in result.output
    assert stored["value"].is_finite().all() and (stored["step"] == 3).all()


def test_eval_of_a_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "neither a run directory nor a checkpoint" in result.output


def test_synergy_over_the_ladder_prints_both_tables_and_writes_the_heatmap(
    ladder_runs: dict[str, Path], tmp_path: Path
) -> None:
    for run in ladder_runs.values():
        evaluate_run(run, only=["retrieval", "depth_probe"], scenes=6)
    others = [str(p) for name, p in ladder_runs.items() if name != "vl"]
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        ["synergy", *others, "--baseline", str(ladder_runs["vl"]), "--out", str(out)],
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
        app,
        [
            "synergy",
            str(ladder_runs["vl_ssl"]),
            "--baseline",
            str(ladder_runs["vl"]),
            "--out",
            str(out),
        ],
    )
    assert (
        partial.exit_code == 2
        and "missing runs" in partial.output
        and "VL + Ground" in partial.output
    )


def test_eval_of_one_checkpoint_adds_to_the_run_history(tmp_path: Path) -> None:
    run = train_smoke(
        tmp_path,
        "history",
        "tasks=[vl, depth]",
        "schedule.steps=4",
        "output.checkpoint_every=2",
        "output.keep_last=2",
    )
    early = run / "checkpoints" / "step-00000002"
    first = runner.invoke(app, ["eval", str(early), "--only", "retrieval", "--scenes", "4"])
    assert first.exit_code == 0, first.output
    assert "step 2" in first.output and "i2t_r1" in first.output
    args = ["eval", str(run), "--only", "retrieval", "--only", "relative_depth", "--scenes", "4"]
    assert runner.invoke(app, args).exit_code == 0
    stored = pl.read_parquet(run / "eval" / "mini.parquet")
    assert sorted(set(stored["step"])) == [2, 4]
    assert (stored["samples_seen"] == stored["step"] * 8).all()  # smoke batch: 8
    assert set(read_results(run)["evaluator"]) == {"retrieval", "relative_depth"}
    # Evaluating the same step again replaces its rows instead of adding to them.
    assert runner.invoke(app, args).exit_code == 0
    assert pl.read_parquet(run / "eval" / "mini.parquet").height == stored.height


def test_eval_settings_come_from_the_spec_and_bad_ones_are_named(
    ladder_runs: dict[str, Path],
) -> None:
    run = ladder_runs["vl"]
    unknown = runner.invoke(app, ["eval", str(run), "--only", "segmentaton"])
    assert unknown.exit_code == 2 and "segmentaton" in unknown.output
    assert "segmentation" in unknown.output  # the known ones are listed
    no_data = runner.invoke(app, ["eval", str(run), "--suite", "coco_karpathy"])
    assert no_data.exit_code == 2 and "eval.data" in no_data.output
    bad_suite = runner.invoke(app, ["eval", str(run), "--suite", "imagenet"])
    assert bad_suite.exit_code == 2 and "eval.suite" in bad_suite.output


def test_training_evaluates_as_it_goes_and_scaling_plots_it(tmp_path: Path) -> None:
    common = ["tasks=[vl]", "schedule.steps=2", "eval.every_steps=1", "eval.only=[retrieval]"]
    small = train_smoke(tmp_path, "small", *common, "eval.scenes=4")
    wide = train_smoke(tmp_path, "wide", *common, "eval.scenes=4", "model.encoder.width=96")
    assert sorted(set(pl.read_parquet(small / "eval" / "mini.parquet")["step"])) == [1, 2]
    out = tmp_path / "scaling"
    result = runner.invoke(
        app, ["scaling", str(small), str(wide), "--out", str(out)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "samples seen" in result.output and "encoder params" in result.output
    seen = pl.read_parquet(out / "scaling_samples_seen.parquet")
    assert seen.filter(pl.col("series") == "small")["x"].to_list() == [8, 16]
    sizes = pl.read_parquet(out / "scaling_encoder_params.parquet")
    assert sizes["series"].to_list() == ["VL", "VL"]  # one task set, two encoder sizes
    encoder = {
        run.name: count_parameters(load_spec(run / "spec.yaml"))["encoder"] for run in (small, wide)
    }
    assert sizes["x"].to_list() == sorted(encoder.values())
    for axis in ("samples_seen", "encoder_params"):
        assert (out / f"scaling_{axis}.png").stat().st_size > 0


def test_eval_reads_a_public_benchmark_named_on_the_command_line(
    ladder_runs: dict[str, Path], tmp_path: Path
) -> None:
    coco = write_coco(tmp_path / "coco")
    run = ladder_runs["vl_ground"]
    args = ["eval", str(run), "--suite", "coco_karpathy", "--data", str(coco)]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "coco_karpathy suite" in result.output and "t2i_r5" in result.output
    stored = pl.read_parquet(run / "eval" / "coco_karpathy.parquet")
    assert set(stored["metric"]) == {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}
    assert (stored["suite"] == "coco_karpathy").all()
    broken = write_coco(tmp_path / "broken", drop="sentences")
    args = ["eval", str(run), "--suite", "coco_karpathy", "--data", str(broken)]
    bad = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "dataset_coco.json" in bad.output
