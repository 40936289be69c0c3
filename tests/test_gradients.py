"""Early gradient agreement against synergy: group cosines from logged per-task norms and
cosines equal the cosine of the summed gradients, Spearman's rho equals scipy's, and the table
pairs each pair's run with its seed's synergy."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr

from mtv.analysis.gradients import (
    early_cosine,
    gradient_synergy,
    gradient_synergy_summary,
    group_cosine,
    permutation_p,
    spearman,
)

TASKS = ["vl", "distill", "masked", "koleo", "ground"]


def probe_row(gradients: dict[str, np.ndarray], step: int) -> dict[str, float]:
    """What the trainer's gradient probe logs for these per-task gradients."""
    row: dict[str, float] = {"step": step}
    for name, g in gradients.items():
        row[f"grad_norm/{name}"] = float(np.linalg.norm(g))
    for a, b in itertools.combinations(gradients, 2):
        ga, gb = gradients[a], gradients[b]
        row[f"grad_cos/{a}~{b}"] = float(ga @ gb / np.linalg.norm(ga) / np.linalg.norm(gb))
    return row


def test_group_cosine_is_the_cosine_of_the_summed_gradients() -> None:
    rng = np.random.default_rng(0)
    gradients = {t: rng.normal(size=50) for t in TASKS}
    row = probe_row(gradients, 1)
    ssl = gradients["distill"] + gradients["masked"] + gradients["koleo"]
    ground = gradients["ground"]
    expected = ssl @ ground / np.linalg.norm(ssl) / np.linalg.norm(ground)
    got = group_cosine(row, ["distill", "masked", "koleo"], ["ground"])
    assert got == pytest.approx(expected, rel=1e-9)
    assert group_cosine(row, ["ground"], ["depth"]) is None  # depth was not probed


def test_early_cosine_averages_the_first_quarter_of_the_run() -> None:
    rng = np.random.default_rng(1)
    rows = []
    for step in (10, 20, 30, 40, 100):
        shared = rng.normal(size=20)
        sign = 1.0 if step <= 25 else -1.0  # agree early, disagree late
        rows.append(probe_row({"a": shared, "b": sign * shared + 0.01 * rng.normal(size=20)}, step))
    metrics = pl.DataFrame(rows)
    assert early_cosine(metrics, ["a"], ["b"]) == pytest.approx(1.0, abs=1e-3)
    assert early_cosine(metrics, ["a"], ["b"], fraction=1.0) < 0
    assert early_cosine(pl.DataFrame({"step": [1, 2]}), ["a"], ["b"]) is None


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        x = rng.integers(0, 5, size=9).astype(float).tolist()
        y = rng.normal(size=9).tolist()
        if len(set(x)) > 1:
            assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]))


def test_permutation_p_small_for_a_monotone_relation_large_for_noise() -> None:
    x = list(range(9))
    assert permutation_p(x, [v * 2.0 for v in x]) < 0.001
    rng = np.random.default_rng(3)
    assert permutation_p(x, rng.normal(size=9).tolist()) > 0.05


def test_the_table_pairs_each_pair_run_with_its_seed_synergy(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    final_rows, matrix_rows = [], []
    pairs = {("depth", "ground"): 0.5, ("depth", "ssl"): -0.2, ("ground", "ssl"): 0.1}
    tasks = {"ssl": ["distill", "masked", "koleo"], "ground": ["ground"], "depth": ["depth"]}
    for (a, b), agreement in pairs.items():
        for seed in (0, 1, 2):
            run = tmp_path / f"{a}_{b}_{seed}"
            run.mkdir()
            base = rng.normal(size=30)
            grads = {t: base + rng.normal(size=30) * 0.1 for t in tasks[a]}
            grads |= {t: agreement * base + rng.normal(size=30) for t in tasks[b]}
            pl.DataFrame([probe_row(grads, 5), {"step": 100}]).write_parquet(
                run / "metrics.parquet"
            )
            final_rows.append(
                {"run": str(run), "seed": seed, "tasks": ["vl", *tasks[a], *tasks[b]]}
            )
        matrix_rows.append(
            {
                "task_a": a,
                "task_b": b,
                "metric": "average",
                "seed_ids": [0, 1, 2],
                "seed_averages": [agreement + 0.01 * s for s in (0, 1, 2)],
            }
        )
    points = gradient_synergy(pl.DataFrame(final_rows), pl.DataFrame(matrix_rows))
    assert points.height == 9
    by_pair = points.group_by("pair").agg(pl.col("cosine").mean(), pl.col("synergy").mean())
    cos = dict(zip(by_pair["pair"], by_pair["cosine"], strict=True))
    assert cos["depth x ground"] > cos["ground x ssl"] > cos["depth x ssl"]
    summary, rho, p, n = gradient_synergy_summary(points)
    assert n == 9 and summary.height == 3 and rho > 0.7 and p < 0.05
    from mtv.analysis.sections import gradient_section

    text = "\n".join(gradient_section(points))
    assert "| depth x ground | +" in text and "over the 9 (pair, seed) points" in text


def test_a_pair_with_undefined_synergy_keeps_its_cosine_and_leaves_the_correlation(
    tmp_path: Path,
) -> None:
    from mtv.analysis.sections import gradient_section

    rng = np.random.default_rng(5)
    final_rows = []
    for seed in (0, 1):
        run = tmp_path / f"depth_ground_{seed}"
        run.mkdir()
        grads = {"depth": rng.normal(size=30), "ground": rng.normal(size=30)}
        pl.DataFrame([probe_row(grads, 5), {"step": 100}]).write_parquet(run / "metrics.parquet")
        final_rows.append({"run": str(run), "seed": seed, "tasks": ["vl", "depth", "ground"]})
    # no single task's gain stood out: the synergy table has no seed averages for the pair
    matrix = pl.DataFrame(
        [
            {
                "task_a": "depth",
                "task_b": "ground",
                "metric": "average",
                "seed_ids": [],
                "seed_averages": [],
            }
        ],
        schema_overrides={"seed_ids": pl.List(pl.Int64), "seed_averages": pl.List(pl.Float64)},
    )
    points = gradient_synergy(pl.DataFrame(final_rows), matrix)
    assert points.height == 2 and points["synergy"].null_count() == 2
    text = "\n".join(gradient_section(points))
    assert "No gradient probes" not in text
    assert "| depth x ground | " in text and "| undefined |" in text
    assert "too few to correlate" in text


def test_permutation_p_is_exact_for_few_points_and_says_when_it_cannot_reject() -> None:
    from mtv.analysis.gradients import smallest_permutation_p

    # Three points: 2 of the 6 pairings are as extreme as a perfect ordering.
    assert permutation_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1 / 3)
    assert smallest_permutation_p(4) == pytest.approx(2 / 24)
    # With ties, against brute force over every pairing with scipy's rho.
    rng = np.random.default_rng(6)
    x, y = [1.0, 1.0, 2.0, 3.0, 3.0, 4.0], rng.normal(size=6).tolist()
    observed = abs(spearmanr(x, y).statistic)
    pairings = list(itertools.permutations(y))
    extreme = sum(abs(spearmanr(x, list(p)).statistic) >= observed - 1e-9 for p in pairings)
    assert permutation_p(x, y) == pytest.approx(extreme / len(pairings))


def test_nan_points_are_left_out_of_the_correlation_and_few_points_are_said(
    tmp_path: Path,
) -> None:
    from mtv.analysis.sections import gradient_section

    points = pl.DataFrame(
        {
            "pair": ["a x b", "a x c", "b x c", "b x c"],
            "seed": [0, 0, 0, 1],
            "cosine": [0.1, 0.2, 0.3, 0.4],
            "synergy": [0.1, 0.2, 0.3, math.nan],
        }
    )
    _, rho, p, n = gradient_synergy_summary(points)
    assert n == 3 and rho == pytest.approx(1.0) and p == pytest.approx(1 / 3)
    text = "\n".join(gradient_section(points))
    assert "exact, over all 3! pairings" in text
    assert "3 points cannot give p below 0.33, so this test cannot reject at p < 0.05" in text
