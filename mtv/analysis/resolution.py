"""How large a difference between task sets a sweep's seeds can resolve, per metric.

An *inconclusive* verdict means either that the task sets do not differ or that the seeds are
too few to see it; this module helps tell the two apart. For one metric and every pair of task
sets (A, B) measured at two or more common seeds, the per-seed differences d_s = A_s - B_s have
a sample variance s_AB^2 with n_AB - 1 degrees of freedom. Pooled over the pairs,

    s_pooled^2 = sum_AB (n_AB - 1) s_AB^2 / sum_AB (n_AB - 1),

the seed-to-seed spread of a paired difference at this protocol. With n seeds, a paired
difference stands out of the noise (two-sided Student's t, p < 0.05) when its mean exceeds

    detectable(n) = t(0.975, n - 1) * s_pooled / sqrt(n),

so a true difference of that size stands out in roughly half of repeated sweeps (somewhat more
at few seeds, where each test's own spread varies). With no difference at all, the median
|mean difference| of a pair is about 0.674 s_pooled / sqrt(n): a median effect no larger than
that shows nothing to resolve. The pairs share runs, so the pooled spread is a typical value,
not an independent estimate; projections to more seeds assume the spread stays as measured.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Sequence
from itertools import combinations

import polars as pl

from mtv.analysis.sections import md_table, num
from mtv.analysis.synergy import by_task_set, critical_t, paired
from mtv.analysis.verdicts import short_name

# The projections beside the sweep's own seed count, and how far a search for enough seeds goes.
PROJECTED_SEEDS = (3, 5, 10)
MAX_SEEDS = 30
# The median of |N(0, 1)|: with no difference at all, the mean of n paired differences of
# spread s is N(0, s^2 / n), so the median |mean difference| is about 0.674 s / sqrt(n).
NOISE_MEDIAN = 0.6745


def detectable_difference(spread: float, seeds: int) -> float:
    """The smallest mean paired difference that stands out at `seeds` seeds for a per-seed
    spread `spread` (t(0.975, seeds - 1) * spread / sqrt(seeds))."""
    return critical_t(seeds - 1) * spread / math.sqrt(seeds)


def seeds_needed(spread: float, effect: float, limit: int = MAX_SEEDS) -> int | None:
    """The fewest seeds (2 or more) at which a paired difference of size `effect` would stand
    out for a per-seed spread `spread`; None when even `limit` seeds do not suffice."""
    if effect <= 0:
        return None
    for seeds in range(2, limit + 1):
        if detectable_difference(spread, seeds) < effect:
            return seeds
    return None


def resolution(runs: pl.DataFrame, metrics: Sequence[str]) -> pl.DataFrame:
    """Per metric of `runs` (final rows with run, seed, tasks, metric, value): the pairs of task
    sets pooled, their pooled degrees of freedom and spread, the seeds the pairs share (the
    fewest of any pair: what the verdicts' tests had), the median |mean difference| between task
    sets and the median that noise alone would give (NOISE_MEDIAN), the difference detectable at
    the shared seeds and at PROJECTED_SEEDS, and the seeds needed to resolve the median effect
    (None where it is no larger than noise alone, or needs more than MAX_SEEDS). Metrics with
    no pair at two common seeds are left out."""
    per_set = by_task_set(runs)
    rows = []
    for metric in metrics:
        sum_squares, dof, effects, shared = 0.0, 0, [], []
        for a, b in combinations(sorted(per_set), 2):
            difference = paired(per_set[a], per_set[b], metric)
            if difference.n < 2:
                continue
            # The sample variance of the per-seed differences is SE^2 * n.
            sum_squares += difference.se**2 * difference.n * (difference.n - 1)
            dof += difference.n - 1
            effects.append(abs(difference.mean))
            shared.append(difference.n)
        if not dof:
            continue
        spread = math.sqrt(sum_squares / dof)
        seeds = min(shared)
        effect = statistics.median(effects)
        noise = NOISE_MEDIAN * spread / math.sqrt(seeds)
        rows.append(
            {
                "metric": metric,
                "pairs": len(effects),
                "dof": dof,
                "spread": spread,
                "median_effect": effect,
                "noise_effect": noise,
                "seeds": seeds,
                "detectable": detectable_difference(spread, seeds),
                **{f"detectable_{n}": detectable_difference(spread, n) for n in PROJECTED_SEEDS},
                "seeds_needed": seeds_needed(spread, effect) if effect > noise else None,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "metric": pl.String,
            "pairs": pl.Int64,
            "dof": pl.Int64,
            "spread": pl.Float64,
            "median_effect": pl.Float64,
            "noise_effect": pl.Float64,
            "seeds": pl.Int64,
            "detectable": pl.Float64,
            **{f"detectable_{n}": pl.Float64 for n in PROJECTED_SEEDS},
            "seeds_needed": pl.Int64,
        },
    )


def _seeds_cell(row: dict) -> str:
    if row["median_effect"] <= row["noise_effect"]:
        return "– (no more than noise)"
    return str(row["seeds_needed"]) if row["seeds_needed"] is not None else f"> {MAX_SEEDS}"


def resolution_section(
    table: pl.DataFrame, runs: pl.DataFrame, blind: Collection[str] = ()
) -> list[str]:
    """The report's section: per metric, the pooled spread, the effects there are beside what
    noise alone gives, and the differences the sweep's seeds (and more) would resolve; blind
    metrics marked."""
    if not table.height:
        return []
    sets = len(by_task_set(runs))
    # Projections beyond the seeds the sweep already has (a partial sweep's 2 show 3 as well).
    projected = [n for n in PROJECTED_SEEDS if n > int(table["seeds"].max() or 0)]
    rows = [
        [
            short_name(r["metric"]) + (" (blind)" if r["metric"] in blind else ""),
            num(r["spread"], 2),
            f"{num(r['median_effect'], 2)} ({num(r['noise_effect'], 2)})",
            str(r["seeds"]),
            num(r["detectable"], 2),
            *(num(r[f"detectable_{n}"], 2) for n in projected),
            _seeds_cell(r),
        ]
        for r in table.iter_rows(named=True)
    ]
    return [
        "## What the seeds can resolve\n",
        "Whether an *inconclusive* verdict means no effect or too few seeds. *spread*: the "
        "seed-to-seed standard deviation of a paired difference between two task sets, pooled "
        f"over every pair of the table's {sets} task sets (the pairs share runs, so it is a "
        "typical value, not a test); *median effect*: the median |mean difference| over those "
        "pairs, and in brackets the median that noise alone would give at that spread (0.674 · "
        "spread / √n: a median effect no larger than it gives no sign of an effect); *seeds*: "
        "the seeds the pairs share (the fewest of any pair), at which the verdicts were tested; "
        "*detectable*: the smallest mean difference that stands out there (t(0.975, n − 1) · "
        "spread / √n), and projected to more seeds assuming the spread stays as measured (a "
        "true difference of that size stands out in roughly half of repeated sweeps, somewhat "
        "more with few seeds); *seeds for the median effect*: the fewest seeds at which the "
        "median effect would stand out.\n",
        *md_table(
            [
                "metric",
                "spread",
                "median effect (noise alone)",
                "seeds",
                "detectable",
                *(f"detectable at {n} seeds" for n in projected),
                "seeds for the median effect",
            ],
            rows,
        ),
        "",
    ]
