"""The verdict on the paper's uniform-weighting claim, on planted runs: competitive and stable
uniform weighting is reproduced; a method that beats it somewhere without losing anywhere, or a
uniform run that diverges, contradicts it; a blind metric cannot decide it."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mtv.analysis.loss_weighting import converges_stably, weighting_verdict

METRICS = {"zero_shot/shape_top1": True, "retrieval/i2t_r1": True, "depth_probe/rmse": False}
NOISE = {0: -0.01, 1: 0.0, 2: 0.012}


def planted(tmp_path: Path, effects: dict[str, dict[str, float]], diverged: bool = False):
    """Final rows of `uniform` and two alternatives over 3 seeds, each metric at 0.5 plus the
    experiment's effect (a gain: added, or subtracted for the RMSE), with run folders holding a
    training history that falls (or, `diverged`, one of uniform's with a non-finite step)."""
    rows = []
    for experiment in ("uniform", "uncertainty", "pcgrad"):
        for seed, noise in NOISE.items():
            run = tmp_path / f"{experiment}-{seed}"
            run.mkdir(parents=True)
            bad = diverged and experiment == "uniform" and seed == 1
            pl.DataFrame(
                {
                    "step": list(range(1, 41)),
                    "loss": [10.0 - 0.2 * k for k in range(40)],
                    "nonfinite": [1 if bad and k == 20 else 0 for k in range(40)],
                }
            ).write_parquet(run / "metrics.parquet")
            for metric, higher in METRICS.items():
                effect = effects.get(experiment, {}).get(metric, 0.0)
                rows.append(
                    {
                        "experiment": experiment,
                        "run": str(run),
                        "seed": seed,
                        "metric": metric,
                        "value": 0.5 + noise + (effect if higher else -effect),
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
    rising = pl.DataFrame(
        {"step": [1, 2, 3, 4], "loss": [1.0, 2.0, 3.0, 4.0], "nonfinite": [0] * 4}
    )
    ok, why = converges_stably(rising)
    assert not ok and "first quarter" in why
    missing = weighting_verdict(
        pl.DataFrame(schema={"experiment": pl.String, "run": pl.String}), "uniform", ["pcgrad"]
    )
    assert missing.verdict == "inconclusive" and "runs missing: uniform" in missing.evidence
