"""Synergy (Eq. 4) and the ladder table against hand-computed examples."""

from __future__ import annotations

import math

import polars as pl
import pytest

from mtv.analysis import MissingRuns, ladder_table, synergy, synergy_table, task_groups

SSL = ["vl", "distill", "masked", "koleo"]
RUNS = {
    "vl": (["vl"], 36.2, 0.643),
    "ssl": (SSL, 43.7, 0.568),
    "ground": (["vl", "ground"], 40.0, 0.600),
    "depth": (["vl", "depth"], 37.0, 0.610),
    "ssl_ground": ([*SSL, "ground"], 49.0, 0.537),
    "ssl_depth": ([*SSL, "depth"], 45.0, 0.540),
    "ground_depth": (["vl", "ground", "depth"], 41.0, 0.590),
    "all": ([*SSL, "ground", "depth"], 49.7, 0.512),
}


def results(drop: tuple[str, ...] = ()) -> pl.DataFrame:
    rows = []
    for run, (tasks, accuracy, rmse) in RUNS.items():
        if run in drop:
            continue
        rows.append(
            {
                "run": run,
                "tasks": tasks,
                "metric": "acc",
                "value": accuracy,
                "higher_is_better": True,
            }
        )
        rows.append(
            {"run": run, "tasks": tasks, "metric": "rmse", "value": rmse, "higher_is_better": False}
        )
    return pl.DataFrame(rows)


def test_groups_follow_the_paper() -> None:
    assert task_groups(["vl", "distill", "masked", "koleo", "depth"]) == ("depth", "ssl")
    assert task_groups(["vl", "distill"]) == ()  # SSL counts only as the full trio


def test_synergy_matches_a_hand_computed_example_with_a_lower_is_better_metric() -> None:
    table = synergy_table(results(), pairs=[("ssl", "ground")])
    values = {row["metric"]: row["synergy"] for row in table.iter_rows(named=True)}
    # acc: gains 7.5 (SSL), 3.8 (Ground), 12.8 (both): (12.8 - 7.5) / 7.5
    assert values["acc"] == pytest.approx(5.3 / 7.5)
    # rmse is lower-is-better: gains are decreases, 0.075, 0.043 and 0.106: (0.106 - 0.075) / 0.075
    assert values["rmse"] == pytest.approx(0.031 / 0.075)
    assert values["average"] == pytest.approx((5.3 / 7.5 + 0.031 / 0.075) / 2)


def test_synergy_is_undefined_when_neither_task_helps_alone() -> None:
    assert math.isnan(synergy(-0.1, 0.0, 0.5))
    assert synergy(0.2, 0.1, 0.1) == pytest.approx(-0.5)  # interference is negative


def test_all_three_pairs_by_default() -> None:
    table = synergy_table(results())
    pairs = {(r["task_a"], r["task_b"]) for r in table.iter_rows(named=True)}
    assert pairs == {("depth", "ground"), ("depth", "ssl"), ("ground", "ssl")}


def test_missing_runs_are_named_not_guessed() -> None:
    with pytest.raises(MissingRuns, match=r"VL \+ Ground\b"):
        synergy_table(results(drop=("ground",)), pairs=[("ssl", "ground")])
    with pytest.raises(MissingRuns, match=r"VL \+ SSL \+ Ground \+ Depth"):
        ladder_table(results(drop=("all",)))


def test_ladder_table_layout() -> None:
    table = ladder_table(results())
    rows = {r["tasks"]: r for r in table.iter_rows(named=True)}
    assert list(rows) == [
        "VL",
        "VL + SSL",
        "VL + SSL + Ground",
        "VL + SSL + Ground + Depth",
        "Absolute gain",
    ]
    assert rows["VL"]["rmse"] == "0.643"
    assert rows["VL + SSL"]["acc"] == "43.7 (+7.5)"
    assert rows["VL + SSL"]["rmse"] == "0.568 (-0.075)"
    assert rows["Absolute gain"]["acc"] == "+13.5"
    assert rows["Absolute gain"]["rmse"] == "-0.131"
