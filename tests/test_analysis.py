"""Synergy (Eq. 4) and the ladder table against hand-computed examples; the pieces of the
notebooks (PCA colours, aligned depth, loss curves) on planted inputs."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
import torch

from mtv.analysis import MissingRuns, ladder_table, synergy, synergy_table, task_groups
from mtv.analysis.curves import load_curves, smooth
from mtv.analysis.synergy import describe_tasks, synergy_wide
from mtv.eval.figures import depth_from_disparity, pca_rgb
from mtv.eval.metrics import relative_depth_errors

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


def test_a_run_with_tasks_outside_the_paper_groups_is_not_described_as_a_paper_task_set() -> None:
    # The positive control trains attributes beside VL and depth: it is not "VL + Depth".
    assert describe_tasks(["vl", "attributes", "depth"]) == "VL + Depth + Attributes"
    assert describe_tasks(["vl", "distill", "masked", "koleo", "ground"]) == "VL + SSL + Ground"
    assert describe_tasks(["vl", "distill"]) == "VL + Distill"


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


def test_pca_colours_separate_planted_clusters_consistently_across_images() -> None:
    torch.manual_seed(0)
    direction = torch.randn(32)
    # Two images of 4x4 patches: left half of each is cluster A, right half cluster B.
    side = torch.tensor([-1.0, -1.0, 1.0, 1.0]).repeat(2, 4, 1)  # (2, 4, 4)
    patches = side[..., None] * direction + 0.01 * torch.randn(2, 4, 4, 32)
    colours = pca_rgb(patches)
    assert colours.shape == (2, 4, 4, 3) and colours.min() >= 0 and colours.max() <= 1
    first = colours[..., 0]  # the first component carries the cluster
    left, right = first[:, :, :2], first[:, :, 2:]
    assert abs(left.mean() - right.mean()) > 0.8
    assert left.std() < 0.1 and right.std() < 0.1  # the same colour in both images


def test_depth_from_disparity_undoes_an_unknown_scale_and_shift() -> None:
    depth = torch.rand(2, 8, 8) * 5 + 1
    disparity = 3.0 / depth + torch.tensor([0.5, -0.1])[:, None, None]
    valid = torch.ones_like(depth, dtype=torch.bool)
    torch.testing.assert_close(depth_from_disparity(disparity, depth, valid), depth)
    assert relative_depth_errors(disparity, depth, valid, max_depth=10.0)["delta1"] == 1.0


def test_loss_curves_are_read_per_run_and_smoothed_without_bias(tmp_path: Path) -> None:
    for name, scale in (("a", 1.0), ("b", 2.0)):
        (tmp_path / name).mkdir()
        pl.DataFrame(
            {
                "step": [0, 1, 2],
                "skipped": [False, True, False],
                "loss": [3.0 * scale, 99.0, 1.0 * scale],
                "loss/vl": [2.0, 99.0, 1.0],
                "lr": [0.1, 0.1, 0.1],
            }
        ).write_parquet(tmp_path / name / "metrics.parquet")
    curves = load_curves([tmp_path / "a", tmp_path / "b"])
    assert set(curves["name"]) == {"loss", "loss/vl"}  # lr is not a loss
    assert 99.0 not in curves["value"].to_list()  # skipped steps are left out
    assert curves.filter((pl.col("run") == "b") & (pl.col("name") == "loss"))[
        "value"
    ].to_list() == [
        6.0,
        2.0,
    ]
    assert smooth([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])  # no pull towards 0
    with pytest.raises(FileNotFoundError, match=r"metrics\.parquet"):
        load_curves([tmp_path])


# Over seeds: mean +- SE, paired differences, significance ------------------------------------

SEED_NOISE = {0: -1.0, 1: 0.0, 2: 1.0}  # shared by every run of a seed: pairing removes it


def seeded_results(accuracy: dict[str, float], wobble: dict[str, list[float]]) -> pl.DataFrame:
    """Planted accuracies per task set: value = base + seed noise + the set's own wobble."""
    rows = []
    for run, base in accuracy.items():
        tasks = RUNS[run][0]
        for seed, noise in SEED_NOISE.items():
            value = base + noise + wobble.get(run, [0.0, 0.0, 0.0])[seed]
            rows.append(
                {
                    "run": f"{run}-{seed}",
                    "seed": seed,
                    "tasks": tasks,
                    "metric": "acc",
                    "value": value,
                    "higher_is_better": True,
                }
            )
    return pl.DataFrame(rows)


PLANTED = {
    "vl": 10.0,
    "ssl": 15.0,  # +5, every seed: significant
    "ground": 10.2,  # +0.2 with a wobble of +-1: not significant
    "depth": 12.0,
    "ssl_ground": 15.3,  # +0.3 over SSL with a wobble: not significant
    "ssl_depth": 18.0,
    "ground_depth": 12.5,
    "all": 19.0,
}
WOBBLE = {
    "ground": [1.0, -1.2, 0.6],
    "ssl_ground": [0.9, -1.0, 0.5],
    # Small wobbles, so that the large steps stand out rather than being equal at every seed.
    "ssl": [0.1, -0.1, 0.0],
    "ssl_depth": [-0.1, 0.0, 0.1],
    "depth": [0.05, -0.05, 0.0],
    "ground_depth": [0.0, 0.05, -0.05],
    "all": [0.1, 0.0, -0.1],
}


def test_ladder_over_seeds_shows_mean_se_and_marks_non_significant_steps() -> None:
    table = ladder_table(seeded_results(PLANTED, WOBBLE))
    rows = {r["tasks"]: r["acc"] for r in table.iter_rows(named=True)}
    # Seed noise (-1, 0, +1) is shared, so VL's own SE is 1/sqrt(3) but SSL's step (+5 with a
    # wobble of 0.1) is paired and stands out: no mark.
    assert rows["VL"] == "10 ± 0.58"
    assert rows["VL + SSL"].endswith("(+5 ± 0.058)")
    assert rows["VL + SSL + Ground"].endswith("n.s.)")
    assert "n.s." not in rows["Absolute gain"]
    # A step equal at every seed has no spread to test: marked, not taken for certain.
    exact = ladder_table(seeded_results(PLANTED, {}))
    step = {r["tasks"]: r["acc"] for r in exact.iter_rows(named=True)}["VL + SSL"]
    assert step == "15 ± 0.58 (+5 ± 0 untested (equal at every seed))"


def test_a_ladder_step_is_tested_on_the_seeds_both_steps_have() -> None:
    # VL lacks seed 2: SSL's step rests on 2 paired seeds (+6, +4: 5 ± 1), which Student's t
    # with 1 degree of freedom (12.7 SEs) does not separate from 0, though 2 would (4.30).
    frame = seeded_results(PLANTED, {"ssl": [1.0, -1.0, 0.0]})
    frame = frame.filter(~(pl.col("run") == "vl-2"))
    rows = {r["tasks"]: r["acc"] for r in ladder_table(frame).iter_rows(named=True)}
    assert rows["VL + SSL"].endswith("(+5 ± 1 n.s.)"), rows["VL + SSL"]
    # a level is not a difference: it is never marked n.s.
    small = seeded_results({**PLANTED, "vl": 0.5}, {})
    rows = {r["tasks"]: r["acc"] for r in ladder_table(small).iter_rows(named=True)}
    assert rows["VL"] == "0.5 ± 0.58"


def test_synergy_over_seeds_needs_a_single_gain_that_stands_out() -> None:
    table = synergy_table(seeded_results(PLANTED, WOBBLE))
    cells = {(r["task_a"], r["task_b"], r["metric"]): r for r in table.iter_rows(named=True)}
    # Ground alone is inside the noise, SSL is not: ssl x ground is defined by SSL's gain.
    ssl_ground = cells[("ground", "ssl", "acc")]
    excess = 0.3 + sum(WOBBLE["ssl_ground"]) / 3
    assert ssl_ground["defined"] and ssl_ground["synergy"] == pytest.approx(excess / 5.0)
    assert ssl_ground["significant"] is False  # the excess +0.3 wobbles by about 1
    ssl_depth = cells[("depth", "ssl", "acc")]
    assert ssl_depth["synergy"] == pytest.approx((8.0 - 5.0) / 5.0) and ssl_depth["significant"]
    # With the ground wobble planted on depth's gain instead, no single gain stands out.
    noisy = {**PLANTED, "depth": 10.1, "ground_depth": 10.3}
    table = synergy_table(
        seeded_results(noisy, {**WOBBLE, "depth": [1.1, -0.9, -0.3]}), pairs=[("depth", "ground")]
    )
    row = table.filter(pl.col("metric") == "acc").row(0, named=True)
    assert not row["defined"] and math.isnan(row["synergy"])


def test_two_runs_of_one_task_set_and_seed_are_refused() -> None:
    frame = seeded_results(PLANTED, {})
    duplicate = frame.filter(pl.col("run") == "vl-0").with_columns(pl.lit("vl-copy").alias("run"))
    with pytest.raises(ValueError, match="both have the task set VL and seed 0"):
        synergy_table(pl.concat([frame, duplicate]))


def test_significance_is_students_t_with_the_seeds_degrees_of_freedom() -> None:
    """Three seeds need 4.30 SEs (two-sided p < 0.05), not 2 (p ~ 0.18); five need 2.78."""
    from scipy import stats

    from mtv.analysis.synergy import Estimate, critical_t

    for df in (1, 2, 4, 10, 30, 60, 200):
        assert critical_t(df) == pytest.approx(stats.t.ppf(0.975, df), rel=5e-3)
    three_se = Estimate.of([1.0, 1.3, 1.6])  # mean 1.3, SE 0.173: 7.5 SEs from 0
    assert three_se.significant
    lenient = Estimate.of([0.2, 0.6, 1.0])  # mean 0.6, SE 0.231: 2.6 SEs, n.s. with 2 df
    assert lenient.mean / lenient.se > 2 and not lenient.significant
    assert "n.s." in lenient.text()
    five = Estimate.of([0.2, 0.6, 1.0, 0.4, 0.8])  # mean 0.6, SE 0.141: 4.2 SEs, 4 df
    assert five.significant
    assert Estimate.of([1.0]).significant is None


def test_equal_float32_differences_have_no_spread() -> None:
    """Two seeds whose accuracies differ by the same count of scenes (24 of 500) give float32
    differences that scatter by ~1e-8: that is rounding, not a spread to print as '± 6e-09'."""
    import numpy as np

    from mtv.analysis.synergy import Estimate

    pairs = [(0.762, 0.714), (0.810, 0.762)]
    rounded = Estimate.of([float(np.float32(a)) - float(np.float32(b)) for a, b in pairs])
    assert rounded.se == 0.0 and "± 0 " in rounded.text(signed=True) + " "
    small = Estimate.of([0.0101, 0.0103, 0.0099])  # a real spread well below 1e-3 stays
    assert small.se == pytest.approx(1.1547e-4, rel=1e-3)


def test_a_difference_equal_at_every_seed_is_untested_not_certain() -> None:
    """R@1 over 500 queries moves in steps of 0.002: two seeds whose task sets differ by the
    same 24 scenes are a coincidence of rounding, not a spread of zero, and an infinite t."""
    from mtv.analysis.controls import instrument_sight
    from mtv.analysis.sections import sight_section
    from mtv.analysis.synergy import Estimate
    from mtv.analysis.verdicts import difference_text

    equal = Estimate.of([0.048, 0.048])
    assert equal.equal_at_every_seed and equal.significant is False and not equal.positive
    assert equal.text(signed=True) == "+0.048 ± 0 untested (equal at every seed)"
    assert equal.text(tested=False) == "0.048 ± 0"  # a level is not tested
    assert Estimate.of([0.0, 0.0]).text() == "0 ± 0 n.s."  # no difference at all
    assert not Estimate.of([0.048]).equal_at_every_seed  # one seed: no spread to speak of
    text = difference_text("retrieval/t2i_r1", 0.048, 0.0, False)
    assert text == "T→I R@1 +0.048±0 untested (equal at every seed)"
    # a positive control gaining the same at every seed is not judged, neither seeing nor blind
    rows = pl.DataFrame(
        {
            "experiment": ["control"] * 2,
            "seed": [0, 1],
            "metric": ["object_shape/shape_acc"] * 2,
            "value": [0.3, 0.31],
            "random_init": [0.2, 0.21],
            "higher_is_better": [True, True],
        }
    )
    sight = instrument_sight(rows, "control")
    assert sight.row(0, named=True)["sees"] is None
    assert "| not judged (equal at every seed) |" in "\n".join(sight_section(sight, "control"))


RESULT_SCHEMA = {
    "data": pl.String,
    "trivial": pl.Float64,
    "random_init": pl.Float64,
    "samples_seen": pl.Int64,
    "evaluated_at": pl.Float64,
}


def test_notebooks_evaluate_mini_world_runs_and_name_runs_on_data_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`evaluate_unevaluated` (the synergy notebook's first step) evaluates the mini-world runs
    without results, keeps those with results, and names a run trained on a folder of its own
    instead of spending minutes evaluating it on the mini-world (it did)."""
    import mtv.analysis.runs as runs_module
    from mtv.specs import load_spec, spec_to_yaml

    root = Path(__file__).resolve().parents[1] / "experiments" / "vl.yaml"
    from mtv.eval import RESULT_COLUMNS, evaluators_of, store_results

    folders = {name: tmp_path / name for name in ("fresh", "measured", "stale", "photos")}
    for name, folder in folders.items():
        folder.mkdir()
        extra = ["data.source={kind: folder, root: /photos}"] if name == "photos" else []
        (folder / "spec.yaml").write_text(spec_to_yaml(load_spec(root, extra)))
    current = evaluators_of("mini")["depth_probe"].version
    for name, version in (("measured", current), ("stale", current - 1)):
        row = dict.fromkeys(RESULT_COLUMNS)
        row |= {"suite": "mini", "evaluator": "depth_probe", "version": version, "step": 1}
        row |= {"metric": "rmse", "value": 1.0, "higher_is_better": False}
        store_results(pl.DataFrame([row], schema_overrides=RESULT_SCHEMA), folders[name], "mini")
    called: list[Path] = []
    monkeypatch.setattr(runs_module, "evaluate_run", lambda run, **kw: called.append(run))
    said: list[str] = []
    measured = runs_module.evaluate_unevaluated(list(folders.values()), "mini", 6, said.append)
    assert called == [folders["fresh"], folders["stale"]]  # the older protocol's run too
    assert measured == [folders["fresh"], folders["measured"], folders["stale"]]
    assert "stale: depth_probe measured by an older protocol" in said
    (named,) = [m for m in said if m.startswith("photos")]
    assert "folder data, not the mini-world" in named and "--suite source" in named


def test_a_synergy_cell_is_estimated_on_the_seeds_all_four_task_sets_have() -> None:
    """Depth x ground where the pair's run lacks seed 2: the cell's gains, excess and ratio all
    rest on seeds 0 and 1, so the cell cannot take a sign its own excess does not have."""
    values = {
        "vl": [0.0, 0.0, 0.0],
        "depth": [1.0, 1.05, 1.6],
        "ground": [0.1, 0.1, 0.1],
        "ground_depth": [1.1, 1.16, None],
    }
    rows = [
        {
            "run": f"{run}-{seed}",
            "seed": seed,
            "tasks": RUNS[run][0],
            "metric": "acc",
            "value": value,
            "higher_is_better": True,
        }
        for run, per_seed in values.items()
        for seed, value in enumerate(per_seed)
        if value is not None
    ]
    table = synergy_table(pl.DataFrame(rows), pairs=[("depth", "ground")])
    cell = table.filter(pl.col("metric") == "acc").row(0, named=True)
    # Seeds 0 and 1: depth gains 1.025, the pair exceeds it by 0.1 and 0.11.
    assert cell["seeds"] == 2 and cell["gain_a"] == pytest.approx(1.025)
    assert cell["excess"] == pytest.approx(0.105)
    assert cell["synergy"] == pytest.approx(0.105 / 1.025) and cell["synergy"] > 0
    average = table.filter(pl.col("metric") == "average").row(0, named=True)
    assert average["columns"] == 1 and average["seed_ids"] == [0, 1]
    # A NaN at one seed leaves that seed out of the cell as a missing one does.
    rows[-1]["value"] = math.nan
    nan_cell = synergy_table(pl.DataFrame(rows), pairs=[("depth", "ground")]).row(0, named=True)
    assert nan_cell["seeds"] == 1 and nan_cell["synergy"] == pytest.approx(0.1 / 1.0)


def test_a_pair_average_leaves_out_a_seed_that_misses_one_of_its_columns() -> None:
    """Depth x ground on two columns, the pair's rmse missing at seed 2: seed 2's average would be
    over acc alone, unlike seeds 0 and 1; it is left out, and the table says so."""
    # Depth's gains wobble about means of 1.0 (acc) and 0.2 (rmse, at seeds 0 and 1), so that
    # they stand out of the noise rather than being equal at every seed.
    acc = {"vl": [0, 0, 0], "depth": [0.9, 1.1, 1.0], "ground": [0, 0, 0]}
    acc["ground_depth"] = [1.4, 1.6, 1.5]  # 0.5 above depth, half its mean gain: +0.5
    rmse = {"vl": [1.0] * 3, "depth": [0.81, 0.79, 0.8], "ground": [1.0] * 3}
    rmse["ground_depth"] = [0.91, 0.89, None]  # 0.1 short of depth's gain of 0.2: -0.5
    rows = [
        {
            "run": f"{run}-{seed}",
            "seed": seed,
            "tasks": RUNS[run][0],
            "metric": metric,
            "value": value,
            "higher_is_better": metric == "acc",
        }
        for metric, table in (("acc", acc), ("rmse", rmse))
        for run, per_seed in table.items()
        for seed, value in enumerate(per_seed)
        if value is not None
    ]
    table = synergy_table(pl.DataFrame(rows), pairs=[("depth", "ground")])
    average = table.filter(pl.col("metric") == "average").row(0, named=True)
    # Seeds 0 and 1 average +0.5 and -0.5; seed 2 alone would be +0.5 and lift the mean to 1/6.
    assert average["seed_ids"] == [0, 1] and average["seeds_left_out"] == 1
    assert average["synergy"] == pytest.approx(0.0, abs=1e-12)
    wide = synergy_wide(table).row(0, named=True)
    assert "1 seed(s) left out, missing a column" in wide["average"]
