"""How large a difference between task sets a sweep's seeds can resolve, per metric.

An *inconclusive* verdict means either that the task sets do not differ or that the seeds are
too few to see it. This module helps tell the two apart. For one metric and every pair of task sets
(A, B) measured at two or more common seeds, the per-seed differences d_s = A_s - B_s have a
sample variance s_AB^2 with n_AB - 1 degrees of freedom. Pooled over the pairs,

    s_pooled^2 = sum_AB (n_AB - 1) s_AB^2 / sum_AB (n_AB - 1),

the seed-to-seed spread of a paired difference at this protocol. With n seeds, a paired
difference stands out of the noise (two-sided Student's t, p < 0.05) when its mean exceeds

    detectable(n) = t(0.975, n - 1) * s_pooled / sqrt(n),

so a true difference of that size is found in about half of repeated sweeps. The pairs share
runs, so the pooled spread is a typical value, not an independent estimate; projections to more
seeds assume the spread stays what these seeds show.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Sequence
from itertools import combinations

import polars as pl

from mtv.analysis.sections import md_table, num
from mtv.analysis.synergy import by_task_set, critical_t
from mtv.analysis.verdicts import short_name

# The projections beside the sweep's own seed count, and how far a search for enough seeds goes.
PROJECTED_SEEDS = (5, 10)
MAX_SEEDS = 30


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
    sets pooled, their pooled degrees of freedom and spread, the median |mean difference|
    between task sets (the size of the effects there are), the difference detectable at the
    sweep's seed count and at PROJECTED_SEEDS, and the seeds needed to resolve the median
    effect. Metrics with no pair at two common seeds are left out."""
    per_set = by_task_set(runs)
    sweep_seeds = max((len(seeds) for seeds in per_set.values()), default=0)
    rows = []
    for metric in metrics:
        sum_squares, dof, effects = 0.0, 0, []
        for a, b in combinations(sorted(per_set), 2):
            differences = [
                per_set[a][seed][metric] - per_set[b][seed][metric]
                for seed in sorted(set(per_set[a]) & set(per_set[b]))
                if metric in per_set[a][seed]
                and metric in per_set[b][seed]
                and not math.isnan(per_set[a][seed][metric] - per_set[b][seed][metric])
            ]
            if len(differences) < 2:
                continue
            sum_squares += statistics.variance(differences) * (len(differences) - 1)
            dof += len(differences) - 1
            effects.append(abs(statistics.fmean(differences)))
        if not dof:
            continue
        spread = math.sqrt(sum_squares / dof)
        effect = statistics.median(effects)
        rows.append(
            {
                "metric": metric,
                "pairs": len(effects),
                "dof": dof,
                "spread": spread,
                "median_effect": effect,
                "seeds": sweep_seeds,
                "detectable": detectable_difference(spread, sweep_seeds),
                **{f"detectable_{n}": detectable_difference(spread, n) for n in PROJECTED_SEEDS},
                "seeds_needed": seeds_needed(spread, effect),
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
            "seeds": pl.Int64,
            "detectable": pl.Float64,
            **{f"detectable_{n}": pl.Float64 for n in PROJECTED_SEEDS},
            "seeds_needed": pl.Int64,
        },
    )


def resolution_section(
    table: pl.DataFrame, runs: pl.DataFrame, blind: Collection[str] = ()
) -> list[str]:
    """The report's section: per metric, the pooled spread, the effects there are, and the
    differences the sweep's seeds (and more) would resolve; blind metrics marked."""
    if not table.height:
        return []
    seeds = int(table["seeds"].max() or 0)
    sets = len(by_task_set(runs))
    rows = [
        [
            short_name(r["metric"]) + (" (blind)" if r["metric"] in blind else ""),
            num(r["spread"], 2),
            num(r["median_effect"], 2),
            num(r["detectable"], 2),
            *(num(r[f"detectable_{n}"], 2) for n in PROJECTED_SEEDS),
            str(r["seeds_needed"]) if r["seeds_needed"] is not None else f"> {MAX_SEEDS}",
        ]
        for r in table.iter_rows(named=True)
    ]
    projected = [f"detectable at {n} seeds" for n in PROJECTED_SEEDS]
    return [
        "## What the seeds can resolve\n",
        "Whether an *inconclusive* verdict means no effect or too few seeds. *spread*: the "
        "seed-to-seed standard deviation of a paired difference between two task sets, pooled "
        f"over every pair of the table's {sets} task sets; *median effect*: the median |mean "
        "difference| over those pairs; *detectable*: the smallest mean difference that stands "
        f"out (t(0.975, n − 1) · spread / √n), at this sweep's {seeds} seeds and projected to "
        "more, assuming the spread stays as measured (a true difference of that size is found "
        "in about half of repeated sweeps); *seeds for the median effect*: the fewest seeds at "
        "which the median effect would stand out. The pairs share runs, so the spread is a "
        "typical value, not a test.\n",
        *md_table(
            [
                "metric",
                "spread",
                "median effect",
                f"detectable at {seeds} seeds",
                *projected,
                "seeds for the median effect",
            ],
            rows,
        ),
        "",
    ]
