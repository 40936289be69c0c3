"""The verdict on the paper's uniform-weighting claim, on planted runs: competitive and stable
uniform weighting is reproduced; a method that beats it somewhere without losing anywhere, or a
uniform run that diverges, contradicts it; a blind metric cannot decide it."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from mtv.analysis.loss_weighting import converges_stably, nonfinite_steps, weighting_verdict

METRICS = {"zero_shot/shape_top1": True, "retrieval/i2t_r1": True, "depth_probe/rmse": False}
NOISE = {0: -0.01, 1: 0.0, 2: 0.012}
# Each method's own small jitter per seed (a different size for each), so that no paired
# difference is equal at every seed, which `Estimate` leaves untested.
JITTER = {0: 0.001, 1: -0.001, 2: 0.0}
EXPERIMENTS = ("uniform", "uncertainty", "pcgrad")


def history(losses: list[float]) -> pl.DataFrame:
    """A training history as the trainer logs it: a non-finite step is skipped and names its
    task (`nonfinite`, a string: empty when every loss was finite)."""
    bad = [not math.isfinite(v) for v in losses]
    return pl.DataFrame(
        {
            "step": list(range(1, len(losses) + 1)),
            "loss": losses,
            "skipped": bad,
            "nonfinite": ["depth" if b else "" for b in bad],
        }
    )


def planted(tmp_path: Path, effects: dict[str, dict[str, float]], diverged: bool = False):
    """Final rows of `uniform` and two alternatives over 3 seeds, each metric at 0.5 plus the
    experiment's effect (a gain: added, or subtracted for the RMSE), with run folders holding a
    training history that falls (or, `diverged`, one of uniform's with a non-finite step)."""
    rows = []
    for experiment in EXPERIMENTS:
        for seed, noise in NOISE.items():
            run = tmp_path / f"{experiment}-{seed}"
            run.mkdir(parents=True)
            bad = diverged and experiment == "uniform" and seed == 1
            history(
                [math.nan if bad and k == 20 else 10.0 - 0.2 * k for k in range(40)]
            ).write_parquet(run / "metrics.parquet")
            for metric, higher in METRICS.items():
                effect = effects.get(experiment, {}).get(metric, 0.0)
                rows.append(
                    {
                        "experiment": experiment,
                        "run": str(run),
                        "seed": seed,
                        "metric": metric,
                        "value": 0.5
                        + noise
                        + JITTER[seed] * (1 + EXPERIMENTS.index(experiment))
                        + (effect if higher else -effect),
                        "higher_is_better": higher,
                    }
                )
    return pl.DataFrame(rows)


def test_competitive_stable_uniform_weighting_is_reproduced(tmp_path: Path) -> None:
    worse = {"pcgrad": {"retrieval/i2t_r1": -0.05}}
    verdict = weighting_verdict(planted(tmp_path, worse), "uniform", ["uncertainty", "pcgrad"])
    assert verdict.verdict == "reproduced", verdict.evidence
    assert "all 3 uniform runs converge stably" in verdict.evidence
    # worse on one metric is not better: uniform stays competitive
    assert (
        "pcgrad − uniform: not better (" in verdict.evidence and "I→T R@1 -0.05" in verdict.evidence
    )


def test_a_method_that_wins_without_losing_contradicts_it(tmp_path: Path) -> None:
    better = {"uncertainty": {"depth_probe/rmse": 0.1}}
    verdict = weighting_verdict(planted(tmp_path, better), "uniform", ["uncertainty", "pcgrad"])
    assert verdict.verdict == "contradicted"
    # the RMSE fell by 0.1: shown in its own direction
    assert "uncertainty − uniform: beats uniform (" in verdict.evidence
    assert "depth lin. RMSE ↓ -0.1±" in verdict.evidence


def test_a_blind_metric_cannot_decide_it(tmp_path: Path) -> None:
    better = {"uncertainty": {"depth_probe/rmse": 0.1}}
    frame = planted(tmp_path, better)
    verdict = weighting_verdict(frame, "uniform", ["uncertainty"], blind={"depth_probe/rmse"})
    assert verdict.verdict == "reproduced" and "depth" not in verdict.evidence


def test_a_diverging_uniform_run_contradicts_it(tmp_path: Path) -> None:
    verdict = weighting_verdict(planted(tmp_path, {}, diverged=True), "uniform", ["pcgrad"])
    assert verdict.verdict == "contradicted"
    assert "uniform-1: 1 non-finite step(s)" in verdict.evidence


def test_stability_needs_a_falling_loss() -> None:
    ok, why = converges_stably(history([1.0, 2.0, 3.0, 4.0]))
    assert not ok and "first quarter" in why
    missing = weighting_verdict(
        pl.DataFrame(schema={"experiment": pl.String, "run": pl.String}), "uniform", ["pcgrad"]
    )
    assert missing.verdict == "inconclusive" and "runs missing: uniform" in missing.evidence


def test_a_missing_or_untestable_method_leaves_it_open_not_reproduced(tmp_path: Path) -> None:
    frame = planted(tmp_path, {"uncertainty": {"retrieval/i2t_r1": 0.2}})
    # pcgrad's runs not finished: uncertainty alone cannot make uniform competitive
    without = frame.filter(pl.col("experiment") != "pcgrad")
    verdict = weighting_verdict(
        without.filter(pl.col("experiment") != "uncertainty"), "uniform", ["uncertainty", "pcgrad"]
    )
    assert verdict.verdict == "inconclusive" and "runs missing" in verdict.evidence
    only_pcgrad_missing = weighting_verdict(
        planted(tmp_path / "b", {}).filter(pl.col("experiment") != "pcgrad"),
        "uniform",
        ["uncertainty", "pcgrad"],
    )
    assert only_pcgrad_missing.verdict == "inconclusive", only_pcgrad_missing.evidence
    assert "runs missing: pcgrad" in only_pcgrad_missing.evidence
    # one seed of a method far better than uniform: no test, so no "not better" either
    one_seed = frame.filter((pl.col("experiment") != "uncertainty") | (pl.col("seed") == 0))
    verdict = weighting_verdict(one_seed, "uniform", ["uncertainty", "pcgrad"])
    assert verdict.verdict == "inconclusive", verdict.evidence
    assert "uncertainty − uniform: untested" in verdict.evidence
    assert "I→T R@1 (1 seed(s) paired)" in verdict.evidence


def test_a_history_too_short_to_judge_is_inconclusive_not_a_divergence(tmp_path: Path) -> None:
    frame = planted(tmp_path, {})
    for seed in NOISE:
        run = tmp_path / f"uniform-{seed}"
        history([3.0, 2.0]).write_parquet(run / "metrics.parquet")
    ok, why = converges_stably(pl.read_parquet(tmp_path / "uniform-0" / "metrics.parquet"))
    assert ok is None and "too short" in why
    verdict = weighting_verdict(frame, "uniform", ["uncertainty", "pcgrad"])
    assert verdict.verdict == "inconclusive", verdict.evidence
    assert "uniform runs too short to judge" in verdict.evidence


def test_a_stalled_uniform_run_is_named_beside_the_verdict(tmp_path: Path) -> None:
    from mtv.analysis.training import constant_siglip_loss
    from mtv.specs import spec_to_yaml
    from tests.helpers import tiny_spec

    frame = planted(tmp_path, {})
    run = tmp_path / "uniform-1"
    (run / "spec.yaml").write_text(spec_to_yaml(tiny_spec(["vl"])))  # 4 captions a batch
    history = pl.read_parquet(run / "metrics.parquet")
    stalled = [constant_siglip_loss(4)] * 20 + [1.0] * (history.height - 20)
    history.with_columns(pl.Series("loss/vl", stalled)).write_parquet(run / "metrics.parquet")
    verdict = weighting_verdict(frame, "uniform", ["uncertainty", "pcgrad"])
    # the rule's verdict stands; the stall is said beside it
    assert verdict.verdict == "reproduced"
    assert verdict.evidence.endswith("VL stalled at L0 in: uniform seed 1 (steps 1–20)")


def test_a_real_training_history_is_read_and_its_nonfinite_steps_counted(
    ladder_runs: dict[str, Path],
) -> None:
    """On the trainer's own metrics.parquet (`nonfinite` is a string there, not a count)."""
    real = pl.read_parquet(ladder_runs["vl_ssl_ground_depth"] / "metrics.parquet")
    ok, why = converges_stably(real)
    assert ok is None and "too short" in why  # 3 steps
    assert nonfinite_steps(real) == 0
    skipped = real.with_columns(
        pl.when(pl.col("step") == 2).then(pl.lit("depth")).otherwise(pl.col("nonfinite"))
        .alias("nonfinite"),
        (pl.col("step") == 2).alias("skipped"),
    )  # fmt: skip
    assert nonfinite_steps(skipped) == 1
    assert converges_stably(skipped) == (False, "1 non-finite step(s)")


def test_a_nonfinite_loss_early_in_the_run_is_not_stable_convergence() -> None:
    # A NaN in the first quarter must not make "last < first" false and pass as convergence.
    losses = [math.inf, *(10.0 - 0.2 * k for k in range(1, 40))]
    ok, why = converges_stably(pl.DataFrame({"step": list(range(1, 41)), "loss": losses}))
    assert ok is False and why == "1 non-finite step(s)"


def test_a_win_beside_untested_columns_is_not_a_contradiction(tmp_path: Path) -> None:
    frame = planted(tmp_path, {"uncertainty": {"retrieval/i2t_r1": 0.2}})
    # uncertainty's depth numbers exist for one seed only: that column is untested.
    frame = frame.filter(
        (pl.col("experiment") != "uncertainty")
        | (pl.col("metric") != "depth_probe/rmse")
        | (pl.col("seed") == 0)
    )
    verdict = weighting_verdict(frame, "uniform", ["uncertainty", "pcgrad"])
    assert verdict.verdict == "inconclusive", verdict.evidence
    assert "uncertainty − uniform: beats uniform (" in verdict.evidence
    assert "untested: depth lin. RMSE ↓ (1 seed(s) paired)" in verdict.evidence


def test_only_the_reports_metrics_stand_for_paper_columns(tmp_path: Path) -> None:
    # A win on a metric outside the report's list (whose sight the control never judged)
    # cannot decide the claim.
    frame = planted(tmp_path, {"uncertainty": {"zero_shot/shape_top1": 0.2}})
    verdict = weighting_verdict(
        frame, "uniform", ["uncertainty", "pcgrad"], metrics=["retrieval/i2t_r1"]
    )
    assert verdict.verdict == "reproduced", verdict.evidence
    assert "shape" not in verdict.evidence
    everything = weighting_verdict(frame, "uniform", ["uncertainty", "pcgrad"])
    assert everything.verdict == "contradicted"


def test_a_win_that_does_not_survive_the_correction_for_every_test_is_not_one_corrected(
    tmp_path: Path,
) -> None:
    # uncertainty − uniform differs by 0.001 · (+1, -1, 0) per seed (JITTER): a gain of 0.0035
    # is t = 6.1 (p = 0.026) alone, above 0.05 / 6 for the 6 tests (2 methods x 3 metrics).
    narrow = {"uncertainty": {"depth_probe/rmse": 0.0035}}
    verdict = weighting_verdict(
        planted(tmp_path / "a", narrow), "uniform", ["uncertainty", "pcgrad"]
    )
    assert verdict.verdict == "contradicted" and verdict.corrected == "reproduced", verdict
    assert "corrected for 6 tests (Holm): none stands" in verdict.evidence
    clear = {"uncertainty": {"depth_probe/rmse": 0.1}}
    verdict = weighting_verdict(
        planted(tmp_path / "b", clear), "uniform", ["uncertainty", "pcgrad"]
    )
    assert verdict.verdict == verdict.corrected == "contradicted", verdict
    assert "(Holm): uncertainty depth lin. RMSE ↓ stands" in verdict.evidence
