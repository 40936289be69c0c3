"""Markdown pieces of the sweep report that stand on their own: tables, the instruments'
section (positive control, reach) and gradient agreement beside synergy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import polars as pl

from mtv.analysis.controls import blind_metrics
from mtv.analysis.curves import experiment_label
from mtv.analysis.gradients import (
    EARLY_FRACTION,
    EXACT_UP_TO,
    PERMUTATIONS,
    gradient_synergy_summary,
    smallest_permutation_p,
)
from mtv.analysis.sweep_report import instrument_reach
from mtv.analysis.synergy import Estimate
from mtv.analysis.training import STALL_FRACTION, STALL_TOLERANCE
from mtv.analysis.verdicts import short_name


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def num(value: float | None, digits: int = 3) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}g}"
    )


def sight_section(sight: pl.DataFrame, control: str, decides: bool = True) -> list[str]:
    """The positive control against its random init, per metric, with the blind ones marked
    (`decides`: the sweep's control, whose blind metrics leave the verdicts; else one shown
    beside it, e.g. in another world)."""
    rows = []
    for r in sight.iter_rows(named=True):
        estimate = Estimate(r["gain"], r["gain_se"], r["seeds"])
        state = "sees" if r["sees"] else "**blind**" if r["sees"] is False else "not judged"
        if r["sees"] is None and estimate.equal_at_every_seed:
            state += " (equal at every seed)"
        if r["seeds"] == 1 and r["sees"] is not None:
            state += " (1 seed: sign only)"
        rows.append(
            [
                short_name(r["metric"]),
                num(r["control"]),
                num(r["random_init"]),
                estimate.text(signed=True),
                state,
            ]
        )
    if not rows:
        return [
            f"Positive control `{control}`: no finished run in this sweep yet, so no instrument "
            "is shown to see, and the verdicts leave every metric out until it finishes.\n"
        ]
    blind = sorted(blind_metrics(sight))
    unjudged = sorted(sight.filter(pl.col("sees").is_null())["metric"].to_list())
    # One seed has no spread to test against: the sign of the gain is all it gives, and a
    # reader of a partial sweep must not take that for the test the text describes.
    untested = (
        " With one seed there is no test yet: an instrument is marked by the sign of its gain "
        "alone, until more seeds finish."
        if sight["seeds"].max() == 1
        else ""
    )
    table = md_table(["metric", "control", "random init", "gain", "instrument"], rows)
    if not decides:
        return [
            f"Also `{control}` against its own random init (shown, not deciding blindness: "
            "see its experiment file for how it differs)"
            + (f"; blind there: {', '.join(short_name(m) for m in blind)}." if blind else ".")
            + untested
            + "\n",
            *table,
            "",
        ]
    return [
        f"Positive control: `{control}`, an encoder trained directly for what the instruments "
        "ask (see its experiment file), against its own random-init weights, paired by seed "
        "(gain in the metric's own direction; Student's t, p < 0.05). A metric on which it "
        "does not gain significantly is *blind* at this scale and left out of the verdicts and "
        "the synergy average"
        + (f": {', '.join(short_name(m) for m in blind)}." if blind else " (none is).")
        + (
            " Not judged (no random-init values, or a gain equal at every seed, which has no "
            "spread to test), so left out as well: "
            + ", ".join(short_name(m) for m in unjudged)
            + "."
            if unjudged
            else ""
        )
        + untested
        + "\n",
        *table,
        "",
    ]


def instrument_section(
    summary: pl.DataFrame,
    sight: pl.DataFrame | None,
    control: str | None,
    extra: dict[str, pl.DataFrame] | None = None,
) -> list[str]:
    """The positive control's verdict on each instrument, then the metrics on which no trained
    task set stands out of its noise above the trivial predictor or above its own random-init
    encoder, named with the numbers: their differences between task sets do not measure what
    training added."""
    reach = instrument_reach(summary)

    def best(row: dict) -> str:
        value = Estimate(row["mean"], row["se"], row["seeds"]).text(tested=False)
        name = row["experiment"] + (f" ({row['variant']})" if row["variant"] else "")
        return f"best {name} {value}"

    lines = []
    # With one seed there is no spread: "beats" is then the sign of the difference alone.
    tested = reach.height > 0 and (reach["seeds"].max() or 1) > 1
    beats = "significantly" if tested else "at all"
    how = f"{beats}, Student's t at p < 0.05" if tested else f"{beats}; one seed, no test"
    flat = [r for r in reach.iter_rows(named=True) if not r["beats_trivial"]]
    if flat:
        lines.append(
            f"At the trivial predictor's level for every task set compared (the positive controls "
            f"aside: none beats it {how}; "
            "differences between task sets on these metrics are noise): "
            + "; ".join(
                f"{short_name(r['metric'])} ({best(r)}, trivial {num(r['trivial'])})" for r in flat
            )
            + ".\n"
        )
    untrained = [
        r for r in reach.iter_rows(named=True) if r["beats_trivial"] and not r["beats_random_init"]
    ]
    if untrained:
        lines.append(
            "Not above the untrained encoder (no task set compared beats its own random-init "
            f"weights {beats}; the instrument reads what a random encoder's features "
            "already hold): "
            + "; ".join(
                f"{short_name(r['metric'])} ({best(r)}, random init {num(r['random_init'])}, "
                f"trivial {num(r['trivial'])})"
                for r in untrained
            )
            + ".\n"
        )
    controlled = sight_section(sight, control) if sight is not None and control else []
    if sight is not None and control and sight.height:
        unmeasured = sorted(set(summary["metric"].to_list()) - set(sight["metric"].to_list()))
        if unmeasured:
            controlled.append(
                f"Not measured on `{control}`, so not shown to see and left out of the verdicts: "
                + ", ".join(short_name(m) for m in unmeasured)
                + ".\n"
            )
    for name, other in (extra or {}).items():
        controlled += sight_section(other, name, decides=False)
    if not controlled:
        lines.insert(0, "No positive control in this sweep: no instrument is judged blind.\n")
    return ["### What the instruments can see\n", *controlled, *lines]


def gradient_section(points: pl.DataFrame) -> list[str]:
    """Early gradient cosine beside synergy, per pair, and their rank correlation."""
    lines = ["## Gradient agreement and synergy\n"]
    if not points.height:
        return [
            *lines,
            "No gradient probes in the pair runs' histories (`runtime.grad_probe_every` unset, or "
            "their `metrics.parquet` not on this machine): nothing to compare synergy with.\n",
        ]
    summary, rho, p, n = gradient_synergy_summary(points)
    rows = [
        [
            r["pair"],
            Estimate(r["cosine"], r["cosine_se"], r["seeds"]).text(signed=True),
            Estimate(r["synergy"], r["synergy_se"], r["synergy_seeds"]).text(signed=True)
            if r["synergy_seeds"]
            else "undefined",
        ]
        for r in summary.iter_rows(named=True)
    ]
    correlation = (
        f"Spearman's rank correlation between the two over the {n} (pair, seed) points with a "
        f"defined synergy: ρ = {num(rho, 2)}, permutation p = {num(p, 2)} ("
        + (
            f"exact, over all {n}! pairings"
            if n <= EXACT_UP_TO
            else f"Monte Carlo, {PERMUTATIONS:,} pairings"
        )
        + (
            f"; {n} points cannot give p below {num(floor, 2)}, so this test cannot reject at "
            "p < 0.05"
            if (floor := smallest_permutation_p(n)) >= 0.05
            else ""
        )
        + "). Points of one pair share its runs' design, so they are not independent draws: "
        "with three pairs this can show at most whether the orderings agree, not a law.\n"
        if n >= 3
        else f"{f'Only {n}' if n else 'No'} (pair, seed) point(s) with a defined synergy: too "
        "few to correlate "
        "(Spearman's ρ needs 3), so this table cannot say whether gradient agreement predicts "
        "synergy.\n"
    )
    return [
        *lines,
        "The cosine between the two groups' summed gradients at the shared encoder, averaged "
        f"over the probes in the first {EARLY_FRACTION:.0%} of the run that trains both "
        "(`runtime.grad_probe_every`; SSL = distill + masked + koleo), beside the pair's "
        "average synergy (the Table 4 average above), mean ± SE over seeds; *undefined* where "
        "no single task's gain stands out of the noise.\n",
        *md_table(["pair", "early gradient cosine", "synergy (average)"], rows),
        "",
        correlation,
    ]


def stall_section(stalls: pl.DataFrame, figure: str | None) -> list[str]:
    """The VL loss of every run against L0, and the runs that stalled there."""
    if not stalls.height:
        return []
    level = num(float(stalls["l0"][0]), 4)
    lines = ["## Training histories\n"]
    if figure:
        lines.append(f"![VL loss per run]({figure})\n")
    stalled = stalls.filter(pl.col("stalled"))
    described = "; ".join(
        f"{experiment_label(r['experiment'], r.get('variant'))} seed {r['seed']} "
        f"(steps {r['first']}–{r['last']}, at L0 for "
        f"{r['steps']} of the run's {r['logged']} logged steps)"
        for r in stalled.iter_rows(named=True)
    )
    lines.append(
        f"L0 = {level} is the VL loss of logits that ignore the image (one positive caption in "
        "the batch; `mtv/analysis/training.py`). "
        + (
            f"Stalled at L0 (within {STALL_TOLERANCE:.0%} of it for at least "
            f"{STALL_FRACTION:.0%} of the run's steps in one stretch, brief spikes off it "
            f"bridged): {described}. A stall is an "
            "event of the optimisation, not what the task set can learn: where one stalled "
            "seed drives a difference between task sets, the difference is that seed's.\n"
            if stalled.height
            else f"No run sat at L0 (within {STALL_TOLERANCE:.0%}) for {STALL_FRACTION:.0%} of "
            "its steps in one stretch.\n"
        )
    )
    return lines


# The step rate a run's training minutes are computed at: a high quantile of its logged rates,
# so that stretches in which it shared the machine with other work (a test suite, a second
# job) do not count; the median would charge them to the run.
UNSHARED_RATE_QUANTILE = 0.9
TRAIN_MINUTES_NOTE = (
    "*train min*: what a run's training costs on this machine: its steps × batch at its "
    f"{round(100 * UNSHARED_RATE_QUANTILE)}th-percentile logged rate, so that stretches in "
    "which it shared the CPU with other work do not count; mean over seeds."
)


def runs_section(
    summary: pl.DataFrame,
    metrics: list[str],
    minutes: dict[tuple[str, str], float],
    threads_note: str = "",
    other_worlds: Sequence[str] = (),
) -> list[str]:
    """The runs table with the random-init and trivial rows, averaged over the experiments
    evaluated on the sweep's own scenes: `other_worlds` (e.g. a control seen from closer) are
    scored on other scenes, so their references would mix in another world's."""
    header = ["experiment", "tasks", "seeds", "train min", *map(short_name, metrics)]
    rows = []
    timed_runs, total_minutes = 0, 0.0
    for (experiment, variant), frame in summary.group_by(
        "experiment", "variant", maintain_order=True
    ):
        seeds = int(frame["seeds"].max() or 0)
        key = (str(experiment), str(variant))
        if key in minutes:
            timed_runs += seeds
            total_minutes += minutes[key] * seeds
        values = {
            r["metric"]: Estimate(r["mean"], r["se"], r["seeds"]).text(tested=False)
            for r in frame.iter_rows(named=True)
        }
        name = experiment_label(experiment, variant)
        rows.append(
            [
                name,
                frame["tasks"][0],
                str(seeds),
                num(minutes.get(key), 2),
                *(values.get(m, "–") for m in metrics),
            ]
        )
    own_world = summary.filter(~pl.col("experiment").is_in(list(other_worlds)))
    for column, title in (("random_init", "random-init encoder"), ("trivial", "trivial predictor")):
        refs = own_world.group_by("metric").agg(pl.col(column).mean())
        values = dict(refs.iter_rows())
        rows.append([f"*{title}*", "", "", "", *(num(values.get(m)) for m in metrics)])
    worlds_note = (
        " The reference rows leave out "
        + ", ".join(f"`{name}`" for name in other_worlds)
        + ", scored on scenes of its own (its references: *What the instruments can see*)."
        if other_worlds
        else ""
    )
    # The whole sweep's cost, which a reader planning a rerun wants before the rows' detail.
    total_note = (
        f" In all, {timed_runs} run(s) trained for "
        + (f"{total_minutes / 60:.1f} hours" if total_minutes >= 60 else f"{total_minutes:.2g} min")
        + " at these rates."
        if timed_runs
        else ""
    )
    return [
        *md_table(header, rows),
        "",
        TRAIN_MINUTES_NOTE + total_note + threads_note + worlds_note,
    ]


def baseline_section(summary: pl.DataFrame) -> list[str]:
    """The VL-only baseline's headline numbers beside its references, in words."""
    baseline = summary.filter(pl.col("tasks") == "VL")
    if not baseline.height:
        return []
    lines = ["## The VL-only baseline\n"]
    # One sentence per grid point: a sweep over the baseline's settings has several.
    for (experiment, variant), rows in baseline.group_by(
        "experiment", "variant", maintain_order=True
    ):
        parts = [
            f"{short_name(row['metric'])} "
            f"{Estimate(row['mean'], row['se'], row['seeds']).text(tested=False)} "
            f"(trivial {num(row['trivial'])}, random init {num(row['random_init'])})"
            for row in rows.iter_rows(named=True)
        ]
        lines.append(
            f"What the other tasks are added to ({experiment_label(str(experiment), variant)}): "
            + "; ".join(parts)
            + ".\n"
        )
    return lines
