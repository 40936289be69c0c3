"""What a sweep's seeds can resolve: the pooled spread of paired differences between task sets,
against an independent transcription of its formula."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import polars as pl

from mtv.analysis.resolution import (
    detectable_difference,
    resolution,
    resolution_section,
    seeds_needed,
)

TASKS = {"vl": ["vl"], "vl_depth": ["vl", "depth"], "vl_ground": ["vl", "ground"]}


def runs_of(values: dict[str, dict[int, float]], metric: str = "segmentation/miou") -> pl.DataFrame:
    """Final rows of one metric: `values[experiment][seed]`."""
    return pl.DataFrame(
        [
            {
                "run": f"{experiment}-{seed}",
                "seed": seed,
                "tasks": TASKS[experiment],
                "metric": metric,
                "value": value,
            }
            for experiment, per_seed in values.items()
            for seed, value in per_seed.items()
        ]
    )


def test_the_pooled_spread_and_detectable_difference_match_their_formula() -> None:
    rng = np.random.default_rng(7)
    table = rng.normal(0.5, 0.05, size=(3, 3))  # experiment x seed
    values = {e: {s: float(table[i, s]) for s in range(3)} for i, e in enumerate(TASKS)}
    row = resolution(runs_of(values), ["segmentation/miou"]).row(0, named=True)
    # Independent transcription: every pair of experiments at three seeds weighs 2 dof alike.
    differences = [table[i] - table[j] for i, j in combinations(range(3), 2)]
    pooled = math.sqrt(np.mean([np.var(d, ddof=1) for d in differences]))
    assert row["pairs"] == 3 and row["dof"] == 6 and row["seeds"] == 3
    assert math.isclose(row["spread"], pooled, rel_tol=1e-9)
    assert math.isclose(row["median_effect"], np.median([abs(d.mean()) for d in differences]))
    # Student's t(0.975) at 2, 4 and 9 degrees of freedom: 4.303, 2.776, 2.262.
    assert math.isclose(row["detectable"], 4.303 * pooled / math.sqrt(3), rel_tol=1e-6)
    assert math.isclose(row["detectable_5"], 2.776 * pooled / math.sqrt(5), rel_tol=1e-6)
    assert math.isclose(row["detectable_10"], 2.262 * pooled / math.sqrt(10), rel_tol=1e-6)


def test_pairs_weigh_by_their_degrees_of_freedom_and_one_common_seed_is_no_pair() -> None:
    # vl_depth - vl: 1, 3 (variance 2, 1 dof); vl_ground - vl: 0, 0, 3 (variance 3, 2 dof);
    # vl_ground - vl_depth shares seeds 0 and 1 only: -1, -3 (variance 2, 1 dof).
    values = {
        "vl": {0: 0.0, 1: 0.0, 2: 0.0},
        "vl_depth": {0: 1.0, 1: 3.0},
        "vl_ground": {0: 0.0, 1: 0.0, 2: 3.0},
    }
    row = resolution(runs_of(values), ["segmentation/miou"]).row(0, named=True)
    assert row["dof"] == 4 and row["pairs"] == 3
    assert math.isclose(row["spread"] ** 2, (2 * 1 + 3 * 2 + 2 * 1) / 4)
    # a metric no pair measures at two common seeds has no row
    one_seed = {e: {0: v[0]} for e, v in values.items()}
    assert resolution(runs_of(one_seed), ["segmentation/miou"]).height == 0


def test_seeds_needed_is_the_fewest_seeds_at_which_the_effect_stands_out() -> None:
    # t(0.975, 1) / sqrt(2) = 8.98: an effect of 10 spreads of 1 stands out at 2 seeds.
    assert seeds_needed(1.0, 10.0) == 2
    # 1.0 stands out where t / sqrt(n) < 1: 2.571 / sqrt(6) = 1.05, 2.447 / sqrt(7) = 0.92.
    assert seeds_needed(1.0, 1.0) == 7
    assert detectable_difference(1.0, 7) < 1.0 < detectable_difference(1.0, 6)
    # beyond the limit, or no effect at all: no number of seeds
    assert seeds_needed(1.0, 0.1) is None and seeds_needed(1.0, 0.0) is None


def test_the_seeds_are_those_the_pairs_share_and_unmeasured_values_are_skipped() -> None:
    # VL has three seeds, the others two (a sweep part-way): the tests had two seeds, so the
    # detectable difference is t(0.975, 1) = 12.706 spreads over sqrt(2), not t at 3 seeds.
    values = {
        "vl": {0: 0.5, 1: 0.52, 2: 0.49},
        "vl_depth": {0: 0.6, 1: 0.58},
        "vl_ground": {0: 0.55, 1: 0.5},
    }
    row = resolution(runs_of(values), ["segmentation/miou"]).row(0, named=True)
    assert row["seeds"] == 2
    assert math.isclose(row["detectable"], 12.706 * row["spread"] / math.sqrt(2), rel_tol=1e-6)
    # a null or NaN value (an evaluation that failed) leaves that seed out of its pairs
    broken = {**values, "vl_ground": {0: 0.55, 1: 0.5, 2: None}, "vl": {0: 0.5, 1: 0.52, 2: 0.49}}
    broken["vl_depth"] = {0: 0.6, 1: 0.58, 2: math.nan}
    assert resolution(runs_of(broken), ["segmentation/miou"]).row(0, named=True) == row


def test_a_median_effect_at_the_noise_level_needs_no_seed_count() -> None:
    # Task sets that wobble against each other by 0.01 with no shift: every pair's mean
    # difference is 0, no more than noise alone gives, so no seed count would resolve it.
    flat = {
        "vl": {0: 0.5, 1: 0.5, 2: 0.5},
        "vl_depth": {0: 0.51, 1: 0.49, 2: 0.5},
        "vl_ground": {0: 0.49, 1: 0.51, 2: 0.5},
    }
    row = resolution(runs_of(flat), ["segmentation/miou"]).row(0, named=True)
    # pooled variance (1e-4 + 1e-4 + 4e-4) * 2 / 6 = 2e-4
    assert math.isclose(row["spread"], math.sqrt(2e-4), rel_tol=1e-6)
    assert math.isclose(row["noise_effect"], 0.6745 * math.sqrt(2e-4 / 3), rel_tol=1e-6)
    assert row["median_effect"] < 1e-9 and row["seeds_needed"] is None
    # Shifted by 0.1 and 0.2: median effect 0.1, which t(0.975, 1) * 0.0141 / sqrt(2) = 0.127
    # misses at two seeds and 4.303 * 0.0141 / sqrt(3) = 0.035 resolves at three.
    shifted = {e: {s: v + 0.1 * i for s, v in flat[e].items()} for i, e in enumerate(TASKS)}
    row = resolution(runs_of(shifted), ["segmentation/miou"]).row(0, named=True)
    assert math.isclose(row["median_effect"], 0.1, rel_tol=1e-6) and row["seeds_needed"] == 3


def test_the_section_projects_only_beyond_the_seeds_there_are() -> None:
    two = runs_of({"vl": {0: 0.5, 1: 0.52}, "vl_depth": {0: 0.6, 1: 0.58}})
    three = runs_of({"vl": {0: 0.5, 1: 0.52, 2: 0.5}, "vl_depth": {0: 0.6, 1: 0.58, 2: 0.61}})
    headers = {}
    for name, runs in (("two", two), ("three", three)):
        lines = resolution_section(resolution(runs, ["segmentation/miou"]), runs)
        headers[name] = next(line for line in lines if line.startswith("| metric"))
    assert "detectable at 3 seeds" in headers["two"] and "detectable at 5 seeds" in headers["two"]
    assert "detectable at 3 seeds" not in headers["three"]
    assert "detectable at 10 seeds" in headers["three"]
