"""The verdicts on the paper's claims and the sweep report, on planted results: a step that lifts
every family is reproduced, one that hurts a family contradicted, noise inconclusive; the report
carries the verdicts, the tables with their standard errors and the paper's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl

from mtv.analysis.controls import blind_metrics, instrument_sight, unseen_metrics
from mtv.analysis.reproduction import write_sweep_analysis
from mtv.analysis.sections import sight_section
from mtv.analysis.sweep_report import final_rows, instrument_reach, run_summary
from mtv.analysis.synergy import Estimate, critical_t, holm
from mtv.analysis.verdicts import COLUMN_METRICS, FAMILIES, verdicts
from mtv.specs import spec_to_yaml
from mtv.specs.sweep import SweepSpec
from tests.helpers import tiny_spec

SSL = ["vl", "distill", "masked", "koleo"]
SETS = {
    "vl": ["vl"],
    "vl_ssl": SSL,
    "vl_ground": ["vl", "ground"],
    "vl_depth": ["vl", "depth"],
    "vl_ssl_ground": [*SSL, "ground"],
    "vl_ssl_depth": [*SSL, "depth"],
    "vl_ground_depth": ["vl", "ground", "depth"],
    "vl_ssl_ground_depth": [*SSL, "ground", "depth"],
}
SEED_NOISE = {0: -0.01, 1: 0.0, 2: 0.012}
# Each experiment's own small jitter per seed, a different size for each, so that no paired
# difference is equal at every seed (which `Estimate` leaves untested) while planted steps of
# 0.01 and more still stand out (the largest SE of a difference is about 0.0004).
JITTER = {0: 0.0001, 1: -0.0001, 2: 0.0}
LOWER = {"depth_probe/rmse", "depth_dpt_probe/rmse", "object_depth/relief_rmse"}


def family_metrics(family: str) -> set[str]:
    """Every metric standing for a column of the family (all candidates)."""
    return {m for column in FAMILIES[family] for m in COLUMN_METRICS[column]}


def planted(effects: dict[str, dict[str, float]], wobble: float = 0.0) -> pl.DataFrame:
    """Every metric standing for a paper column at 0.5 for VL; `effects[experiment][family]`
    adds to that family's metrics (subtracts for lower-is-better ones, so a positive effect is
    a gain); `wobble` is added with alternating signs to every experiment but VL."""
    rows = []
    metrics = sorted({m for family in FAMILIES for m in family_metrics(family)})
    for experiment, tasks in SETS.items():
        for seed, noise in SEED_NOISE.items():
            # The sign alternates by seed and by the parity of the name's length, so that
            # neighbouring ladder steps wobble against each other.
            sign = 1 if (seed + len(experiment)) % 2 else -1
            jitter = (0.0 if experiment == "vl" else wobble * sign) + JITTER[seed] * (
                1 + list(SETS).index(experiment)
            )
            for metric in metrics:
                effect = sum(
                    value
                    for family, value in effects.get(experiment, {}).items()
                    if metric in family_metrics(family)
                )
                lower = metric in LOWER
                value = 0.5 + noise + jitter + (-effect if lower else effect)
                rows.append(
                    {
                        "experiment": experiment,
                        "variant": "",
                        "seed": seed,
                        "tasks": tasks,
                        "run": f"{experiment}-{seed}",
                        "metric": metric,
                        "value": value,
                        "trivial": 0.1,
                        "random_init": 0.2,
                        "higher_is_better": not lower,
                        "step": 10,
                        "samples_seen": 640,
                    }
                )
    return pl.DataFrame(rows)


PAPER_LIKE = {
    "vl_ssl": {"semantic": 0.1, "dense": 0.1},
    "vl_ground": {"semantic": 0.04, "dense": 0.03},
    "vl_depth": {"dense": 0.05},
    "vl_ssl_ground": {"semantic": 0.16, "dense": 0.15},
    "vl_ssl_depth": {"semantic": 0.12, "dense": 0.2},
    "vl_ground_depth": {"semantic": 0.05, "dense": 0.1},
    "vl_ssl_ground_depth": {"semantic": 0.17, "dense": 0.25},
}


def test_a_paper_like_result_reproduces_every_claim() -> None:
    found = {v.claim: v for v in verdicts(planted(PAPER_LIKE))}
    assert {v.verdict for v in found.values()} == {"reproduced"}, found
    # Clear effects (SE ~ 2e-4) stand corrected for the number of tests too, synergy's included.
    assert {v.corrected for v in found.values()} == {"reproduced"}, found
    ssl = found["SSL lifts both semantic and dense metrics"]
    assert "semantic lifted" in ssl.evidence and "dense lifted" in ssl.evidence
    # Differences in the metric's own direction, as in the ladder: the RMSE fell by 0.1.
    assert "depth lin. RMSE ↓ -0.1±" in ssl.evidence and "seg mIoU +0.1±" in ssl.evidence


def test_a_step_that_hurts_a_family_is_contradicted_and_noise_is_inconclusive() -> None:
    hurting = {**PAPER_LIKE, "vl_ssl_ground_depth": {"semantic": 0.17, "dense": 0.1}}
    found = {v.claim: v.verdict for v in verdicts(planted(hurting))}
    assert found["Depth refines pixel-level metrics"] == "contradicted"
    # Ground's step within a wobble of 0.05 per seed: nothing stands out of the noise.
    noisy = {**PAPER_LIKE, "vl_ssl_ground": {"semantic": 0.101, "dense": 0.101}}
    found = {v.claim: v.verdict for v in verdicts(planted(noisy, wobble=0.05))}
    assert found["Grounding lifts retrieval and dense metrics"] == "inconclusive"
    interfering = {
        k: {f: -abs(x) for f, x in v.items()} if "_" in k[3:] else v for k, v in PAPER_LIKE.items()
    }
    found = {v.claim: v.verdict for v in verdicts(planted(interfering))}
    assert found["Average pairwise synergy is positive"] == "contradicted"


def _fake_runs(frame: pl.DataFrame) -> pl.DataFrame:
    """Run folders with what the report reads besides the results: spec, metrics, machine."""
    for run, seed in frame.select("run", "seed").unique().iter_rows():
        folder = Path(run)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spec.yaml").write_text(spec_to_yaml(tiny_spec(["vl"], runtime={"seed": seed})))
        pl.DataFrame({"step": [0, 1], "images_per_s": [100.0, 100.0]}).write_parquet(
            folder / "metrics.parquet"
        )
        (folder / "environment.json").write_text(
            json.dumps(
                {
                    "host": "test",
                    "device": "cpu",
                    "device_name": "x86",
                    "precision": {"resolved": "fp32"},
                }
            )
        )
    return frame


def _report(
    frame: pl.DataFrame, tmp_path: Path, name: str, analysis: dict | None = None
) -> tuple[set[str], str]:
    """The sweep report on `frame`'s planted runs: the names of the files written, and its text."""
    spec = SweepSpec(
        name=name,
        out=str(tmp_path / "out"),
        experiments=["x.yaml"],
        seeds=[0, 1, 2],
        report=str(tmp_path / "results" / f"{name}.md"),
        analysis=analysis or {},
    )
    (tmp_path / "out").mkdir(exist_ok=True)
    written = write_sweep_analysis(frame, spec, tmp_path / "out")
    return {p.name for p in written}, (tmp_path / "results" / f"{name}.md").read_text()


def test_the_report_carries_verdicts_tables_and_references(tmp_path: Path) -> None:
    frame = planted(PAPER_LIKE).with_columns(
        (pl.lit(str(tmp_path / "runs") + "/") + pl.col("run")).alias("run")
    )
    _fake_runs(frame)
    # A pilot read from a committed table: its runs are on another machine.
    committed = tmp_path / "pilot_table.parquet"
    frame.filter(pl.col("experiment") == "vl").with_columns(
        pl.col("run").str.replace(str(tmp_path / "runs"), "/elsewhere", literal=True)
    ).write_parquet(committed)
    names, text = _report(
        frame,
        tmp_path,
        "planted",
        {
            "pilot": [str(tmp_path / "pilot"), str(committed)],
            "comparisons": [{"a": "vl_ssl_ground_depth", "b": "vl_ssl", "title": "Full vs SSL"}],
        },
    )
    assert {"summary.parquet", "ladder.parquet", "synergy.parquet", "planted.md"} <= names
    assert {"planted_ladder.png", "planted_synergy.png", "planted.parquet"} <= names
    assert "## Verdicts" in text and text.count("**reproduced**") == 4
    assert "Table 3 layout" in text and "Table 4 layout" in text
    assert "*paper B/16 10M: VL + SSL*" in text and "(+7.5)" in text  # the paper's increments
    assert "*random-init encoder*" in text and "*trivial predictor*" in text
    # the planted runs logged no gradient probe: said, not silently left out
    assert "## Gradient agreement and synergy" in text and "No gradient probes" in text
    assert "± " in text and "Seeds: 0, 1, 2" in text
    assert "Machine: test: x86 (cpu), world size 1, torch ?, precision fp32" in text
    # a comparison in the metrics' own directions: the full set's RMSE is 0.15 lower
    comparison = text.split("**Full vs SSL** (vl_ssl_ground_depth − vl_ssl")[1].split("\n\n")[1]
    header, _, values = comparison.splitlines()[:3]
    cells = dict(zip(header.strip("| ").split(" | "), values.strip("| ").split(" | "), strict=True))
    assert (
        cells["depth lin. RMSE ↓"] == "-0.15 ± 0.00035" and cells["seg mIoU"] == "+0.15 ± 0.00035"
    )
    # the committed pilot table is shown (its minutes unknown here); a pilot sweep without
    # results is named, not silently left out
    assert "planted_pilot_curves.png" in names
    pilot = text.split("## Pilot")[1]
    assert "| vl | VL | 3 | – |" in pilot
    assert (
        f"Not in this report yet (no aggregate table, `results.parquet`): `{tmp_path / 'pilot'}`"
        in text
    )


def test_metrics_no_task_set_lifts_above_trivial_or_random_init_are_named(tmp_path: Path) -> None:
    frame = planted(PAPER_LIKE)
    # Shape stays at chance whatever the tasks; the untrained encoder beats every trained one on
    # the linear depth probe (RMSE 0.1 against about 0.25-0.5, the constant predictor 1.0).
    frame = frame.with_columns(
        pl.when(pl.col("metric") == "zero_shot/shape_top1")
        .then(0.1 + pl.col("seed") * 0.01)
        .otherwise(pl.col("value"))
        .alias("value"),
        pl.when(pl.col("metric") == "depth_probe/rmse")
        .then(0.1)
        .when(pl.col("metric").is_in(list(LOWER)))
        .then(0.9)  # the other RMSEs: an untrained encoder far behind every trained one
        .otherwise(pl.col("random_init"))
        .alias("random_init"),
        # the constant predictor's RMSE above every encoder's (planted() puts 0.1 everywhere)
        pl.when(pl.col("metric").is_in(list(LOWER))).then(1.0).otherwise(0.1).alias("trivial"),
    )
    metrics = sorted(frame["metric"].unique().to_list())
    reach = {
        r["metric"]: r
        for r in instrument_reach(run_summary(final_rows(frame), metrics)).iter_rows(named=True)
    }
    assert not reach["zero_shot/shape_top1"]["beats_trivial"]
    assert reach["depth_probe/rmse"]["beats_trivial"]
    assert not reach["depth_probe/rmse"]["beats_random_init"]
    # the best experiment on the RMSE is the one whose RMSE is lowest
    assert reach["depth_probe/rmse"]["experiment"] == "vl_ssl_ground_depth"
    others = {
        m: r for m, r in reach.items() if m not in ("zero_shot/shape_top1", "depth_probe/rmse")
    }
    assert all(r["beats_trivial"] and r["beats_random_init"] for r in others.values())

    frame = frame.with_columns((pl.lit(str(tmp_path / "runs") + "/") + pl.col("run")).alias("run"))
    _fake_runs(frame)
    _, text = _report(frame, tmp_path, "planted")
    section = text.split("### What the instruments can see")[1].split("##")[0]
    no_control, at_trivial, untrained = section.strip().split("\n\n")[:3]
    assert "No positive control in this sweep" in no_control
    assert "At the trivial predictor's level" in at_trivial and "0-shot shape" in at_trivial
    assert "Not above the untrained encoder" in untrained and "depth lin. RMSE" in untrained
    assert "seg mIoU" not in section
    assert "significantly, Student's t" in at_trivial and "no test" not in section
    # One seed has no spread: the report says its "beats" is the sign alone, not a test.
    one = frame.filter(pl.col("seed") == frame["seed"].min())
    (tmp_path / "one").mkdir()
    _, text = _report(one, tmp_path / "one", "planted")
    section = text.split("### What the instruments can see")[1].split("##")[0]
    assert "none beats it at all; one seed, no test" in section
    assert "significantly" not in section.split("At the trivial")[1]


def test_a_grid_over_one_experiment_is_reported_without_ladder_or_synergy(tmp_path: Path) -> None:
    """The pilots' case: one task set at several grid points is a set of learning curves, not a
    ladder (two runs of one task set and seed cannot be told apart there)."""
    frame = planted({}).filter(pl.col("experiment") == "vl")
    frame = pl.concat(
        [
            frame.with_columns(
                pl.lit(variant).alias("variant"),
                (pl.lit(str(tmp_path / variant) + "/") + pl.col("run")).alias("run"),
                pl.col("value") + shift,
            )
            for variant, shift in (("data.batch_size=32", 0.0), ("data.batch_size=128", 0.1))
        ]
    )
    _fake_runs(frame)
    for run in frame.filter(pl.col("variant") == "data.batch_size=32")["run"].unique():
        pl.DataFrame({"step": range(20), "images_per_s": [100.0] * 20}).write_parquet(
            Path(run) / "metrics.parquet"
        )
    for run in frame.filter(pl.col("variant") == "data.batch_size=128")["run"].unique():
        # This grid point trains at half the rate: twice the minutes. Most of its steps ran
        # while something else shared the machine (at a fifth of that rate): that is not what
        # the run costs, and the minutes do not charge it (the median rate would, 10x).
        rates = [10.0] * 12 + [50.0] * 8
        pl.DataFrame({"step": range(20), "images_per_s": rates}).write_parquet(
            Path(run) / "metrics.parquet"
        )
    names, text = _report(frame, tmp_path, "grid")
    assert "grid.md" in names and "ladder.parquet" not in names
    assert "vl (data.batch_size=32)" in text and "vl (data.batch_size=128)" in text
    assert "Table 3 layout" not in text and "## Verdicts" not in text
    # the baseline's numbers, one sentence per grid point, each naming its own
    baseline = text.split("## The VL-only baseline")[1].split("##")[0]
    assert "added to (vl (data.batch_size=32))" in baseline
    assert "added to (vl (data.batch_size=128))" in baseline
    minutes = {
        line.split(" | ")[0].strip("| "): float(line.split(" | ")[3])
        for line in text.splitlines()
        if line.startswith("| vl (")
    }
    # (shown to two significant digits)
    ratio = minutes["vl (data.batch_size=128)"] / minutes["vl (data.batch_size=32)"]
    assert 1.9 < ratio < 2.1
    # the sweep's total: 3 runs of 20 steps x 4 images at 100 images/s, 3 at 50
    assert "In all, 6 run(s) trained for 0.12 min at these rates." in text
    assert "shared the CPU with other work do not count" in text
    assert "Not all runs trained alike" not in text  # one thread count (here: unrecorded)
    for run in frame["run"].unique():
        environment = json.loads((Path(run) / "environment.json").read_text())
        threads = 1 if "batch_size=128" in run else 2  # this grid point ran side by side
        (Path(run) / "environment.json").write_text(
            json.dumps(environment | {"cpu_threads": threads})
        )
    _, text = _report(frame, tmp_path, "grid")
    assert "3 run(s) with 1 CPU thread(s); 3 run(s) with 2 CPU thread(s)" in text


def control_rows(seeing: dict[str, float], blind: list[str]) -> pl.DataFrame:
    """A positive control's final rows: on `seeing` metrics it gains the given amount over its
    random init (in the metric's direction), on `blind` ones it sits at its random init up to
    the seeds' noise."""
    rows = []
    for seed, noise in SEED_NOISE.items():
        for metric in [*seeing, *blind]:
            lower = metric in LOWER
            shift = seeing.get(metric, 0.0) * (-1 if lower else 1)
            rows.append(
                {
                    "experiment": "control",
                    "variant": "",
                    "seed": seed,
                    "tasks": ["vl", "attributes", "depth"],
                    "run": f"control-{seed}",
                    "metric": metric,
                    "value": 0.4 + shift + noise,
                    "trivial": 0.1,
                    "random_init": 0.4 - noise / 2,
                    "higher_is_better": not lower,
                    "step": 10,
                    "samples_seen": 640,
                }
            )
    return pl.DataFrame(rows)


def test_the_positive_control_marks_blind_instruments_and_not_seeing_ones() -> None:
    rows = control_rows(
        {"segmentation/miou": 0.2, "object_depth/relief_rmse": 0.1},
        ["depth_probe/rmse", "zero_shot/shape_top1"],
    )
    sight = {r["metric"]: r for r in instrument_sight(rows, "control").iter_rows(named=True)}
    assert sight["segmentation/miou"]["sees"] and sight["object_depth/relief_rmse"]["sees"]
    # the RMSE fell by 0.1: a gain, in the metric's own direction
    assert abs(sight["object_depth/relief_rmse"]["gain"] - 0.1) < 0.02
    assert sight["depth_probe/rmse"]["sees"] is False
    assert blind_metrics(instrument_sight(rows, "control")) == {
        "depth_probe/rmse",
        "zero_shot/shape_top1",
    }
    # another experiment's rows are not the control's
    assert instrument_sight(rows, "vl").height == 0


def test_a_one_seed_control_says_its_sight_is_untested() -> None:
    rows = control_rows({"segmentation/miou": 0.2}, ["depth_probe/rmse"])
    three = "\n".join(sight_section(instrument_sight(rows, "control"), "control"))
    assert "sign only" not in three and "no test yet" not in three
    one = rows.filter(pl.col("seed") == rows["seed"].min())
    text = "\n".join(sight_section(instrument_sight(one, "control"), "control"))
    assert "With one seed there is no test yet" in text
    assert "| sees (1 seed: sign only) |" in text


def test_blind_metrics_leave_the_verdicts_and_each_column_counts_once() -> None:
    frame = planted(PAPER_LIKE)
    # The depth step makes the (blind) linear depth probe and DPT probe worse, object relief
    # better; SSL makes 0-shot colour worse (IN-1k is counted through shape, its first metric).
    worse_depth = (pl.col("experiment") == "vl_ssl_ground_depth") & pl.col("metric").is_in(
        ["depth_probe/rmse", "depth_dpt_probe/rmse"]
    )
    worse_colour = (pl.col("experiment") == "vl_ssl") & (pl.col("metric") == "zero_shot/color_top1")
    frame = frame.with_columns(
        pl.when(worse_depth)
        .then(pl.col("value") + 0.5)
        .when(worse_colour)
        .then(pl.col("value") - 0.3)
        .otherwise(pl.col("value"))
        .alias("value")
    )
    plain = {v.claim: v for v in verdicts(frame)}
    depth = plain["Depth refines pixel-level metrics"]
    assert depth.verdict == "inconclusive" and "pixel-level mixed" in depth.evidence
    ssl = plain["SSL lifts both semantic and dense metrics"]
    assert ssl.verdict == "reproduced" and "0-shot colour" not in ssl.evidence
    blind = {"depth_probe/rmse", "depth_dpt_probe/rmse"}
    judged = {v.claim: v for v in verdicts(frame, blind=blind)}
    depth = judged["Depth refines pixel-level metrics"]
    assert depth.verdict == "reproduced", depth.evidence
    assert "object relief RMSE ↓" in depth.evidence
    assert "not showing them to see: depth lin. RMSE ↓, depth DPT RMSE ↓" in depth.evidence
    # every metric of a column blind: the column cannot count, the family says so
    none = {v.claim: v for v in verdicts(frame, blind=blind | {"object_depth/relief_rmse"})}
    depth = none["Depth refines pixel-level metrics"]
    assert "no metric that can see: NYUv2" in depth.evidence
    synergy = none["Average pairwise synergy is positive"]
    assert "depth lin. RMSE" not in synergy.evidence.split("left out")[0]


def test_the_report_shows_the_control_and_marks_the_blind(tmp_path: Path) -> None:
    # scored on scenes of its own world: references far from the default world's
    near = control_rows({"zero_shot/shape_top1": 0.3}, []).with_columns(
        pl.lit("control_near").alias("experiment"),
        (pl.lit("near-") + pl.col("run")).alias("run"),
        pl.lit(0.9).alias("trivial"),
        pl.col("random_init") + 0.5,
    )
    frame = pl.concat(
        [
            planted(PAPER_LIKE),
            control_rows({"segmentation/miou": 0.2}, ["depth_probe/rmse"]),
            near,
        ],
        how="diagonal_relaxed",
    ).with_columns((pl.lit(str(tmp_path / "runs") + "/") + pl.col("run")).alias("run"))
    _fake_runs(frame)
    analysis = {"control": "control", "extra_controls": ["control_near"], "tables": list(SETS)}
    names, text = _report(frame, tmp_path, "ctl", analysis)
    assert "instruments.parquet" in names
    section = text.split("### What the instruments can see")[1].split("\n## ")[0]
    assert "Positive control: `control`" in section
    assert "| depth lin. RMSE ↓ |" in section and "**blind**" in section
    assert "| seg mIoU |" in section and "| sees |" in section
    # the control in another world is shown and decides nothing
    assert "Also `control_near` against its own random init" in section
    assert "| 0-shot shape | 0.7" in section
    # the runs table's reference rows are the default world's: the near world's stay out
    runs = text.split("## Runs (final step)")[1].split("\n\n")[1].splitlines()
    shape = runs[0].strip("| ").split(" | ").index("0-shot shape")
    default = frame.filter(
        (pl.col("metric") == "zero_shot/shape_top1") & (pl.col("experiment") != "control_near")
    )
    per_experiment = default.group_by("experiment").agg(pl.col("random_init", "trivial").mean())
    for title, column in (
        ("*random-init encoder*", "random_init"),
        ("*trivial predictor*", "trivial"),
    ):
        row = next(r for r in runs if r.startswith(f"| {title}"))
        expected = per_experiment[column].mean()
        assert abs(float(row.strip("| ").split(" | ")[shape]) - expected) < 1e-3, (title, row)
    assert "The reference rows leave out `control_near`" in text
    left_out = text.split("## Verdicts")[1].split("not showing them to see: ")[1].split(")")[0]
    assert "depth lin. RMSE ↓" in left_out
    # metrics the control was never measured on are not shown to see: they are left out too
    assert "Not measured on `control`, so not shown to see" in section
    assert "I→T R@1" in left_out and "seg mIoU" not in left_out
    # what the seeds can resolve follows the verdicts, the blind metrics marked
    resolve = text.split("## What the seeds can resolve")[1].split("\n## ")[0]
    assert text.index("## Verdicts") < text.index("## What the seeds can resolve")
    assert "| depth lin. RMSE ↓ (blind) |" in resolve and "| seg mIoU |" in resolve
    assert "resolution.parquet" in names


def test_a_metric_only_the_control_lifts_is_named_flat_for_the_task_sets(tmp_path: Path) -> None:
    # Shape at chance for every task set; the control, trained for it, reads it well. The
    # control is not a task set: it must not hide that no task set moves the metric.
    frame = pl.concat(
        [
            planted(PAPER_LIKE).with_columns(
                pl.when(pl.col("metric") == "zero_shot/shape_top1")
                .then(0.1 + pl.col("seed") * 0.001)
                .otherwise(pl.col("value"))
                .alias("value")
            ),
            control_rows({"zero_shot/shape_top1": 0.3}, []),
        ],
        how="diagonal_relaxed",
    ).with_columns((pl.lit(str(tmp_path / "runs") + "/") + pl.col("run")).alias("run"))
    _fake_runs(frame)
    for analysis in ({"control": "control", "tables": list(SETS)}, {"control": "control"}):
        _, text = _report(frame, tmp_path, "flat", analysis)
        flat = text.split("At the trivial predictor's level for every task set")[1].split("\n")[0]
        assert "0-shot shape (best vl" in flat, flat
        assert "best control" not in flat and "the positive controls aside" in flat


def test_a_control_without_runs_shows_no_instrument_to_see_so_nothing_is_judged(
    tmp_path: Path,
) -> None:
    frame = planted(PAPER_LIKE).with_columns(
        (pl.lit(str(tmp_path / "runs") + "/") + pl.col("run")).alias("run")
    )
    _fake_runs(frame)
    _, text = _report(frame, tmp_path, "early", {"control": "control", "tables": list(SETS)})
    assert "Positive control `control`: no finished run in this sweep yet" in text
    # the paper-like results would reproduce every claim, but no metric is shown to see yet
    verdicts_part = text.split("## Verdicts")[1].split("\n## ")[0]
    assert "**reproduced**" not in verdicts_part and "**inconclusive**" in verdicts_part
    # without a control in the sweep, nothing is judged and every metric counts
    _, plain = _report(frame, tmp_path, "plain", {"tables": list(SETS)})
    assert "**reproduced**" in plain


def test_unjudged_and_unmeasured_metrics_are_not_shown_to_see() -> None:
    rows = control_rows({"segmentation/miou": 0.2}, ["depth_probe/rmse"])
    unjudged = control_rows({"retrieval/i2t_r1": 0.3}, []).with_columns(
        pl.lit(None, pl.Float64).alias("random_init")
    )
    sight = instrument_sight(pl.concat([rows, unjudged]), "control")
    assert sight.filter(pl.col("metric") == "retrieval/i2t_r1")["sees"][0] is None
    metrics = ["segmentation/miou", "depth_probe/rmse", "retrieval/i2t_r1", "zero_shot/color_top1"]
    assert unseen_metrics(sight, metrics) == {
        "depth_probe/rmse",
        "retrieval/i2t_r1",
        "zero_shot/color_top1",
    }
    text = "\n".join(sight_section(sight, "control"))
    assert (
        "Not judged (no random-init values, or a gain equal at every seed, which has no "
        "spread to test), so left out as well: I→T R@1" in text
    )


def retrieval_summary(**columns: list) -> pl.DataFrame:
    """A sweep summary of I→T R@1 for two task sets at three seeds, given the columns that vary
    (experiment, mean, se, trivial, random_init)."""
    fixed = {"variant": ["", ""], "metric": ["retrieval/i2t_r1"] * 2, "seeds": [3, 3]}
    return pl.DataFrame({**fixed, **columns, "higher_is_better": [True, True]})


def test_a_task_set_whose_metric_failed_is_not_taken_for_the_best() -> None:
    # polars sorts NaN above every number: a failed metric must not hide the real best
    summary = retrieval_summary(
        experiment=["broken", "vl"],
        mean=[math.nan, 0.6],
        se=[math.nan, 0.01],
        trivial=[0.01, 0.01],
        random_init=[0.01, 0.01],
    )
    reach = instrument_reach(summary).row(0, named=True)
    assert reach["experiment"] == "vl" and reach["beats_trivial"]


def test_a_metric_is_above_trivial_when_any_task_set_stands_out_not_only_the_best_mean() -> None:
    # The best mean wobbles (0.30 ± 0.1, inside t(2) = 4.3 SEs of 0.10); the next stands out.
    summary = retrieval_summary(
        experiment=["noisy", "steady"],
        mean=[0.30, 0.25],
        se=[0.1, 0.01],
        trivial=[0.10, 0.10],
        random_init=[0.10, 0.24],
    )
    reach = instrument_reach(summary).row(0, named=True)
    assert reach["experiment"] == "noisy" and reach["beats_trivial"]
    # Above random init neither stands out: steady's own is 0.24, 1 SE below it.
    assert not reach["beats_random_init"]


def test_one_seed_tests_nothing_and_says_so_instead_of_printing_nan() -> None:
    one_seed = planted(PAPER_LIKE).filter(pl.col("seed") == 0)
    found = {v.claim: v for v in verdicts(one_seed)}
    assert {v.verdict for v in found.values()} == {"inconclusive"}
    for verdict in found.values():
        assert "nan" not in verdict.evidence, verdict.evidence
    ssl = found["SSL lifts both semantic and dense metrics"].evidence
    assert "semantic untested" in ssl and "seg mIoU +0.1 (1 seed)" in ssl
    synergy = found["Average pairwise synergy is positive"].evidence
    assert "1 seed: untested" in synergy and "column(s)" in synergy


def test_a_report_whose_tables_lack_runs_still_lists_every_claim(tmp_path: Path) -> None:
    frame = planted(PAPER_LIKE).with_columns(
        (pl.lit(str(tmp_path / "runs") + "/") + pl.col("run")).alias("run")
    )
    frame = frame.filter(pl.col("experiment") != "vl_ssl_ground_depth")
    _fake_runs(frame)
    _, text = _report(frame, tmp_path, "partial", {"tables": list(SETS)})
    verdict_rows = text.split("## Verdicts")[1].split("\n\n")[1]
    assert "| SSL lifts both semantic and dense metrics | **reproduced** | reproduced |" in (
        verdict_rows
    )
    assert (
        "| Depth refines pixel-level metrics | **inconclusive** | – | "
        "VL + SSL + Ground + Depth vs VL + SSL + Ground: runs missing |"
    ) in verdict_rows
    assert "(no ladder: missing runs for the ladder: VL + SSL + Ground + Depth)" in text
    assert "4.30 standard errors with 3 seeds" in text


def test_a_column_passes_to_its_next_metric_when_one_run_lacks_the_first() -> None:
    in1k = COLUMN_METRICS["IN-1k"]
    frame = planted(PAPER_LIKE)
    # SSL's run lacks whole-scene zero-shot shape: IN-1k counts through the zoomed object's.
    lacking = frame.filter(~((pl.col("experiment") == "vl_ssl") & (pl.col("metric") == in1k[0])))
    ssl = {v.claim: v for v in verdicts(lacking)}["SSL lifts both semantic and dense metrics"]
    assert "object 0-shot shape +0.1±" in ssl.evidence, ssl.evidence
    # Lacking all of IN-1k's metrics, the column is named, not silently dropped.
    none = frame.filter(~((pl.col("experiment") == "vl_ssl") & pl.col("metric").is_in(in1k)))
    ssl = {v.claim: v for v in verdicts(none)}["SSL lifts both semantic and dense metrics"]
    assert "not measured in both: IN-1k" in ssl.evidence, ssl.evidence


def test_a_p_value_agrees_with_the_t_table_and_holm_steps_down() -> None:
    # Three values whose mean lies t(0.975, 2) standard errors from 0 have p = 0.05 (the SE of
    # m + (-d, 0, d) is d / sqrt(3)).
    d = 0.01 * math.sqrt(3)
    mean = critical_t(2) * 0.01
    assert abs(Estimate.of([mean - d, mean, mean + d]).p_value - 0.05) < 1e-3
    assert Estimate.of([0.3]).p_value is None  # one seed: no test
    assert Estimate.of([0.002, 0.002]).p_value is None  # equal at every seed: untested
    # Sorted p against 0.05 / 3, 0.05 / 2, 0.05 / 1; a None is no test and not counted.
    assert holm([0.01, 0.04, None, 0.03]) == [True, False, None, False]
    assert holm([0.03, 0.01, 0.02]) == [True, True, True]
    assert holm([0.04, 0.04]) == [False, False]  # each would stand alone


def _ssl_lift(spread: float) -> pl.DataFrame:
    """VL and VL + SSL only, SSL lifting every family by 0.1 with a per-seed spread of
    (-spread, 0, +spread) in the gain: t = 0.1 * sqrt(3) / spread on each metric."""
    frame = planted({"vl_ssl": {"semantic": 0.1, "dense": 0.1}})
    frame = frame.filter(pl.col("experiment").is_in(["vl", "vl_ssl"]))
    shift = pl.col("seed").replace_strict({0: -spread, 1: 0.0, 2: spread}, return_dtype=pl.Float64)
    shift = pl.when(pl.col("experiment") == "vl_ssl").then(shift).otherwise(0.0)
    return frame.with_columns(
        pl.when(pl.col("higher_is_better"))
        .then(pl.col("value") + shift)
        .otherwise(pl.col("value") - shift)
    )


def test_a_lift_that_stands_alone_but_not_corrected_for_its_number_is_inconclusive_corrected() -> (
    None
):
    # t = 6 (p = 0.027) on each metric: significant alone, not after Holm over several.
    [weak] = [v for v in verdicts(_ssl_lift(0.1 * math.sqrt(3) / 6)) if v.claim.startswith("SSL")]
    assert weak.verdict == "reproduced" and weak.corrected == "inconclusive", weak
    assert "(Holm): none stands" in weak.evidence
    # t = 20 (p = 0.0025): below 0.05 / 7, so every lift stands corrected too.
    [strong] = [
        v for v in verdicts(_ssl_lift(0.1 * math.sqrt(3) / 20)) if v.claim.startswith("SSL")
    ]
    assert strong.verdict == strong.corrected == "reproduced", strong
    assert "none stands" not in strong.evidence
