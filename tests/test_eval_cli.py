"""`mtv eval` on a trained run prints every metric of the mini suite; `mtv synergy` over
smoke-sized runs of the whole ladder prints both tables and writes the heatmap."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from mtv_cli.main import app
from typer.testing import CliRunner

from mtv.analysis.runs import train_smoke
from mtv.eval import FrozenModel, evaluate_run, evaluators_of, outdated_evaluators, read_results
from mtv.graph import count_parameters
from mtv.specs import load_spec
from tests.test_eval_public import write_coco

runner = CliRunner()
EVALUATORS = evaluators_of("mini")


def test_eval_prints_every_metric_of_the_mini_suite(ladder_runs: dict[str, Path]) -> None:
    run = ladder_runs["vl_ssl_ground_depth"]
    result = runner.invoke(app, ["eval", str(run), "--scenes", "10"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    stored = pl.read_parquet(run / "eval" / "mini.parquet")
    assert set(stored["evaluator"]) == set(EVALUATORS)
    for evaluator, metric in stored.select("evaluator", "metric").iter_rows():
        assert evaluator in result.output and metric in result.output
    assert stored["value"].is_finite().all() and (stored["step"] == 3).all()
    # Every metric carries its reference points, printed beside it.
    assert "trivial" in result.output and "random init" in result.output
    assert stored["trivial"].is_not_null().all() and stored["random_init"].is_finite().all()
    chance = stored.filter(pl.col("metric") == "i2t_r1")["trivial"][0]
    assert chance == 0.1  # one caption in a gallery of the 10 scenes
    cached = pl.read_parquet(run / "eval" / "mini.random_init.parquet")
    assert set(cached["evaluator"]) <= set(EVALUATORS) and cached.height == stored.height


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
    # `mtv spec validate` checks the same against the suite table, before any run starts.
    smoke = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"
    for setting, message in (
        ("eval.suite=imagenet", "eval.suite: unknown suite 'imagenet'; known: mini, source"),
        ("eval.suite=nyuv2", "eval.data: suite 'nyuv2' reads a benchmark"),
        ("eval.only=[segmentaton]", "unknown evaluator(s) ['segmentaton'] for suite 'mini'"),
    ):
        checked = runner.invoke(app, ["spec", "validate", str(smoke), "--set", setting])
        assert checked.exit_code == 2 and message in checked.output, checked.output


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
    # The same step measured on another copy of the benchmark: the history keeps both, keyed
    # by the data, and reads one of them, never the two mixed (the latest, or the one named).
    other = write_coco(tmp_path / "other")
    args = ["eval", str(run), "--suite", "coco_karpathy", "--data", str(other)]
    assert runner.invoke(app, args, env={"COLUMNS": "200"}).exit_code == 0
    stored = pl.read_parquet(run / "eval" / "coco_karpathy.parquet")
    identities = stored["data"].unique().to_list()
    assert len(identities) == 2 and stored.height == 8
    (first,) = [d for d in identities if str(coco) + '"' in d]
    (second,) = [d for d in identities if str(other) + '"' in d]
    latest = read_results(run, "coco_karpathy")
    assert latest.height == 4 and latest["data"].to_list() == [second] * 4
    assert read_results(run, "coco_karpathy", data=first)["data"].to_list() == [first] * 4


def _planted_run(root: Path, name: str, tasks: list[str], seed: int, accuracy: float) -> Path:
    """A run directory with a spec and one planted evaluation result, no weights."""
    from mtv.eval import store_results
    from mtv.specs import spec_to_yaml
    from tests.helpers import tiny_spec

    run = root / f"{name}-{seed}"
    run.mkdir(parents=True)
    spec = tiny_spec(tasks, runtime={"seed": seed})
    (run / "spec.yaml").write_text(spec_to_yaml(spec))
    rows = pl.DataFrame(
        {
            "suite": ["mini"],
            "evaluator": ["zero_shot"],
            "metric": ["color_top1"],
            "value": [accuracy],
            "trivial": [0.1],
            "random_init": [0.1],
            "higher_is_better": [True],
            "step": [10],
            "samples_seen": [80],
        }
    )
    store_results(rows, run, "mini")
    return run


def test_synergy_over_seeds_prints_mean_se_and_marks_non_significant_differences(
    tmp_path: Path,
) -> None:
    ssl = ["vl", "distill", "masked", "koleo"]
    sets = {
        "vl": (["vl"], 0.30),
        "ssl": (ssl, 0.40),  # +0.10 with a wobble of 0.001: significant
        "ground": (["vl", "ground"], 0.30),  # +0.00 +- 0.02: not significant
        "depth": (["vl", "depth"], 0.35),
        "ssl_ground": ([*ssl, "ground"], 0.41),
        "ssl_depth": ([*ssl, "depth"], 0.45),
        "ground_depth": (["vl", "ground", "depth"], 0.36),
        "all": ([*ssl, "ground", "depth"], 0.47),
    }
    wobble = {0: -0.02, 1: 0.0, 2: 0.02}
    # A step equal at every seed is untested (rounded scores coincide): SSL's wobbles a little.
    small = {0: 0.001, 1: -0.001, 2: 0.0}
    runs = []
    for name, (tasks, accuracy) in sets.items():
        for seed in (0, 1, 2):
            per_seed = {"ground": wobble, "ssl_ground": wobble, "ssl": small}.get(name, {})
            extra = per_seed.get(seed, 0.0)
            runs.append(_planted_run(tmp_path, name, tasks, seed, accuracy + 0.01 * seed + extra))
    out = tmp_path / "report"
    result = runner.invoke(
        app, ["synergy", *map(str, runs), "--out", str(out)], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 0, result.output
    assert "0.31 ± 0.0058" in result.output  # VL: mean and SE over the three seeds
    assert "(+0.1 ± 0.00058)" in result.output  # SSL's step, paired by seed: significant
    assert "(+0.01 ± 0.012 n.s.)" in result.output  # +Ground's step wobbles: not significant
    assert "one seed per task set" not in result.output
    matrix = pl.read_parquet(out / "synergy.parquet")
    assert matrix["seeds"].max() == 3
    single = runner.invoke(
        app,
        ["synergy", *(str(r) for r in runs if r.name.endswith("-0")), "--out", str(out)],
        env={"COLUMNS": "250"},
    )
    assert single.exit_code == 0 and "one seed per task set" in single.output
    wrong = runner.invoke(app, ["synergy", *map(str, runs), "--baseline", str(runs[3])])
    assert wrong.exit_code == 2 and "a baseline is a VL-only run" in wrong.output


def test_scores_of_an_older_protocol_are_out_of_date_and_never_reused(
    ladder_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "vl"
    shutil.copytree(ladder_runs["vl"], run)
    only = ["retrieval", "depth_probe"]
    evaluate_run(run, only=only, scenes=6)
    assert outdated_evaluators(run) == []
    first = read_results(run)
    versions = dict(first.select("evaluator", "version").unique().iter_rows())
    assert versions == {name: EVALUATORS[name].version for name in only}
    references = []
    original = FrozenModel.random_init

    def counted(self: FrozenModel) -> FrozenModel:
        references.append(self)
        return original(self)

    monkeypatch.setattr(FrozenModel, "random_init", counted)
    # Files as an mtv before protocol versions wrote them (every protocol then was version 1;
    # the depth probe's is 2 now): its scores and cached reference are both out of date.
    assert EVALUATORS["depth_probe"].version > 1 == EVALUATORS["retrieval"].version
    for name in ("mini.parquet", "mini.random_init.parquet"):
        path = run / "eval" / name
        pl.read_parquet(path).drop("version").write_parquet(path)
    assert outdated_evaluators(run) == ["depth_probe"]
    evaluate_run(run, only=only, scenes=6)
    assert len(references) == 1  # the reference measured again, not read from the cache
    assert outdated_evaluators(run) == []
    assert read_results(run).height == first.height  # replaced, not mixed with older scores
    # A protocol changes again: the same, from files that record versions.
    monkeypatch.setattr(EVALUATORS["depth_probe"], "version", 7)
    assert outdated_evaluators(run) == ["depth_probe"]
    evaluate_run(run, only=only, scenes=6)
    assert len(references) == 2
    again = read_results(run)
    assert outdated_evaluators(run) == []
    assert again.filter(pl.col("evaluator") == "depth_probe")["version"].to_list() == [7, 7]
    assert again.height == first.height
    evaluate_run(run, only=only, scenes=6)
    assert len(references) == 2  # now the cache is current
