"""The paper's two analysis tables, from evaluation results of a set of runs, over seeds.

Results are rows of (run, tasks, metric, value, higher_is_better) and optionally `seed` (0 when
absent), `tasks` being the run's task kinds. Task kinds are grouped as the paper groups them:
`ssl` = distill + masked + koleo, `ground`, `depth`; `vl` is the baseline every run shares.

Runs of the same seed share initial weights and data order, so task sets are compared *paired by
seed*: a difference is estimated from the per-seed differences, as mean +- standard error (SE)
over seeds, and is significant when a two-sided Student's t-test with the seeds' n - 1 degrees
of freedom rejects 0 at p < 0.05: its mean lies more than t(0.975, n - 1) SEs from 0 (4.30 SEs
with 3 seeds, 2.78 with 5; a fixed two-SE rule would be p ~ 0.18 at 3 seeds). One seed gives
no SE, and nothing is marked.

- Ladder (Table 3): rows = task sets in ladder order, columns = metrics, each value with its
  increment over the previous row in parentheses, and an absolute-gain row (last - first).
- Synergy (Table 4, Eq. 4): for groups A and B with gains dA, dB, dAB over the VL baseline,
      Synergy(A, B) = (dAB - max(dA, dB)) / max(dA, dB),
  where for lower-is-better metrics a gain is a decrease. The ratio is defined only where the
  better single task's gain stands out of its noise (significantly > 0; > 0 with one seed):
  dividing by a gain inside the noise gives numbers of any size that mean nothing. The
  numerator dAB - max(dA, dB) ("excess") carries its own SE and significance.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import polars as pl

GROUPS: dict[str, frozenset[str]] = {
    "ssl": frozenset({"distill", "masked", "koleo"}),
    "ground": frozenset({"ground"}),
    "depth": frozenset({"depth"}),
}
LADDER: tuple[tuple[str, ...], ...] = ((), ("ssl",), ("ssl", "ground"), ("ssl", "ground", "depth"))
SIGNIFICANCE_LEVEL = 0.05  # two-sided
# Student's t at 0.975 (two-sided p = 0.05) for 1..30 degrees of freedom (standard tables).
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
          2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
          2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def critical_t(df: int) -> float:
    """How many standard errors from 0 a mean over df + 1 seeds must lie to be significant
    (two-sided p < 0.05): Student's t(0.975, df); beyond the table, the normal's 1.96 with
    the first-order correction for df (2.042 at 30, 1.98 at 120)."""
    if df < 1:
        raise ValueError(f"a t-test needs at least 1 degree of freedom, not {df}")
    return _T_975[df - 1] if df <= len(_T_975) else 1.96 + 2.4 / df


# How a difference equal at every seed is marked instead of tested (`Estimate.significant`).
UNTESTED_EQUAL = "untested (equal at every seed)"


def significance_mark(mean: float, se: float, significant: bool | None) -> str:
    """What follows a tested 'mean ± SE': nothing when significant, ' n.s.' when not, and
    the UNTESTED_EQUAL mark when the value is equal at every seed (no spread to test)."""
    if se == 0 and mean != 0:
        return f" {UNTESTED_EQUAL}"
    return "" if significant else " n.s."


def holm(p_values: Sequence[float | None], level: float = SIGNIFICANCE_LEVEL) -> list[bool | None]:
    """Which of a family of tests stand after Holm's step-down correction for their number K:
    sorted by p, the i-th smallest (from 0) stands while it and every smaller one are at most
    level / (K - i). A None (no test) stays None and does not count in K. It controls the chance
    of any false finding among the K at `level`, where testing each at `level` lets it grow
    with K (to about 1 - (1 - level)^K for independent tests)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    stands: list[bool | None] = [None if p is None else False for p in p_values]
    for rank, (p, i) in enumerate(tested):
        if p > level / (len(tested) - rank):
            break
        stands[i] = True
    return stands


TaskSet = tuple[str, ...]
PerSeed = dict[int, dict[str, float]]  # seed -> metric -> value


class MissingRuns(ValueError):
    """The runs needed for a table are not all there (each missing task set is named)."""


@dataclass(frozen=True)
class Estimate:
    """Mean and standard error of per-seed values (SE is NaN with fewer than two seeds)."""

    mean: float
    se: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate:
        values = [v for v in values if not math.isnan(v)]
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        mean = sum(values) / n
        if n < 2:
            return cls(mean, math.nan, n)
        variance = sum((v - mean) ** 2 for v in values) / (n - 1)
        se = math.sqrt(variance / n)
        # Differences that are equal at every seed up to rounding have no spread. Metrics are
        # computed in float32 (relative precision 6e-8), so equal differences of float32 values
        # scatter by ~1e-8 and must not print as a spread ('± 6e-09').
        return cls(mean, 0.0 if se < 1e-6 * max(1.0, abs(mean)) else se, n)

    @property
    def equal_at_every_seed(self) -> bool:
        """A nonzero mean with no spread over two or more seeds: the t statistic is infinite,
        but only because the values coincide (see `significant`)."""
        return self.n >= 2 and self.se == 0 and self.mean != 0

    @property
    def significant(self) -> bool | None:
        """|mean| > t(0.975, n - 1) SE (Student's t-test, two-sided p < 0.05); None when there
        is no SE (one seed). A value equal at every seed is not significant: metrics counted
        over a few hundred scenes are rounded (R@1 over 500 queries moves in steps of 0.002), so
        equal values at a few seeds are a coincidence of rounding, not a spread of zero."""
        if self.n < 2 or math.isnan(self.se):
            return None
        if self.equal_at_every_seed:
            return False
        return abs(self.mean) > critical_t(self.n - 1) * self.se

    @property
    def p_value(self) -> float | None:
        """Two-sided p of Student's t-test that the mean is 0, with n - 1 degrees of freedom;
        None where `significant` tests nothing (one seed) or a value equal at every seed is
        left untested."""
        if self.significant is None or self.equal_at_every_seed:
            return None
        if self.se == 0:  # zero at every seed: no difference at all
            return 1.0
        from scipy.stats import t  # imported here: only the sweep report needs it

        return float(2 * t.sf(abs(self.mean) / self.se, self.n - 1))

    @property
    def positive(self) -> bool:
        """Stands out of the noise above 0 (with one seed: merely above 0)."""
        significant = self.significant
        return self.mean > 0 and (significant is None or significant)

    def text(self, digits: int = 3, signed: bool = False, tested: bool = True) -> str:
        """'mean ± SE', with 'n.s.' when `tested` and the mean does not stand out of 0. A level
        (an accuracy, an RMSE) is not tested: 'n.s.' is for differences, gains and synergies."""
        sign = "+" if signed else ""
        if math.isnan(self.mean):
            return "-"
        out = f"{self.mean:{sign}.{digits}g}"
        if self.n >= 2:
            out += f" ± {self.se:.2g}"
            if tested:
                out += significance_mark(self.mean, self.se, self.significant)
        return out


def task_groups(kinds: Iterable[str]) -> tuple[str, ...]:
    """A run's task kinds as paper groups, e.g. (vl, distill, masked, koleo, depth) ->
    ('depth', 'ssl'). A group counts only when all its kinds are present."""
    kinds = set(kinds)
    return tuple(sorted(name for name, members in GROUPS.items() if members <= kinds))


def label(groups: Sequence[str]) -> str:
    """'VL + SSL + Ground + Depth': the groups in the paper's order."""
    ordered = sorted(groups, key=lambda g: list(GROUPS).index(g) if g in GROUPS else len(GROUPS))
    return " + ".join(["VL", *(g.capitalize() if g != "ssl" else "SSL" for g in ordered)])


def describe_tasks(kinds: Iterable[str]) -> str:
    """A run's tasks for a reader: its paper groups ('VL + SSL + Depth'), then every kind that
    no complete group covers, so a run with extra tasks (the positive control's `attributes`) is not
    shown as the paper's task set it contains."""
    kinds = list(kinds)
    groups = task_groups(kinds)
    covered = set().union({"vl"}, *(GROUPS[g] for g in groups))
    extras = sorted({k for k in kinds if k not in covered})
    return " + ".join([label(groups), *(k.capitalize() for k in extras)])


def by_task_set(results: pl.DataFrame) -> dict[TaskSet, PerSeed]:
    """Task set -> seed -> metric -> value; refuses two runs of one task set and seed."""
    if "seed" not in results.columns:
        results = results.with_columns(pl.lit(0).alias("seed"))
    out: dict[TaskSet, PerSeed] = {}
    runs: dict[tuple[TaskSet, int], str] = {}
    for (run, seed), frame in results.group_by("run", "seed", maintain_order=True):
        groups = task_groups(frame["tasks"][0])
        key = (groups, int(seed))  # type: ignore[arg-type]
        if key in runs:
            raise ValueError(
                f"runs {runs[key]} and {run} both have the task set {label(groups)} and seed "
                f"{seed}; keep one run per task set and seed"
            )
        runs[key] = str(run)
        values = dict(zip(frame["metric"].to_list(), frame["value"].to_list(), strict=True))
        out.setdefault(groups, {})[int(seed)] = values  # type: ignore[arg-type]
    return out


def _direction(results: pl.DataFrame) -> dict[str, bool]:
    pairs = results.select("metric", "higher_is_better").unique(maintain_order=True)
    return dict(pairs.iter_rows())


def gain(value: float, baseline: float, higher_is_better: bool) -> float:
    """Improvement over the baseline: an increase, or a decrease for lower-is-better metrics."""
    return value - baseline if higher_is_better else baseline - value


def synergy(gain_a: float, gain_b: float, gain_ab: float) -> float:
    """Eq. 4; NaN when neither task alone improves on the baseline."""
    best = max(gain_a, gain_b)
    return (gain_ab - best) / best if best > 0 else math.nan


def paired(a: PerSeed, b: PerSeed, metric: str, higher: bool | None = None) -> Estimate:
    """Per-seed a - b over the seeds both measured the metric at (a gain of a over b when
    `higher` is given); a missing, null or NaN value leaves its seed out."""
    values = []
    for seed in sorted(set(a) & set(b)):
        x, y = a[seed].get(metric), b[seed].get(metric)
        if x is not None and y is not None:
            values.append(x - y if higher is None else gain(x, y, higher))
    return Estimate.of(values)


def _values(runs: PerSeed, metric: str) -> Estimate:
    return Estimate.of([v[metric] for v in runs.values() if metric in v])


def _complete_seeds(task_sets: Sequence[PerSeed], metric: str) -> list[int]:
    """The seeds at which every one of `task_sets` has a (non-NaN) value of `metric`."""
    seeds = set.intersection(*(set(r) for r in task_sets))
    return sorted(
        s for s in seeds if all(metric in r[s] and not math.isnan(r[s][metric]) for r in task_sets)
    )


def _restrict(runs: PerSeed, seeds: Collection[int]) -> PerSeed:
    return {s: runs[s] for s in seeds}


def _require(runs: dict[TaskSet, PerSeed], needed: dict[TaskSet, str], what: str) -> None:
    missing = sorted(name for groups, name in needed.items() if groups not in runs)
    if missing:
        raise MissingRuns(f"missing runs for the {what}: " + ", ".join(missing))


def synergy_table(
    results: pl.DataFrame,
    pairs: Sequence[tuple[str, str]] | None = None,
    average_over: Collection[str] | None = None,
) -> pl.DataFrame:
    """Rows (task_a, task_b, metric, synergy and its SE, gains with their SEs, excess =
    dAB - max(dA, dB) with its SE, defined, significant, seeds) for every pair and metric, plus
    an `average` row per pair: the mean over the metrics where synergy is defined (of those in
    `average_over`, when given; how many in `columns`), with an SE over seeds of the per-seed
    average of excess / best gain (each seed's average in `seed_averages`, for the seeds
    `seed_ids`: those with a value in every averaged column; `seeds_left_out` counts the
    others). Every estimate of a metric is over the seeds at which all four task sets have
    it. `significant`: the excess differs from 0 significantly (Student's t; None with one seed or
    where synergy is undefined)."""
    runs = by_task_set(results)
    direction = _direction(results)
    pairs = pairs or list(itertools.combinations(sorted(GROUPS), 2))
    needed = {(): "the VL baseline"}
    for a, b in pairs:
        needed |= {
            (a,): label((a,)),
            (b,): label((b,)),
            tuple(sorted((a, b))): label(sorted((a, b))),
        }
    _require(runs, needed, "synergy table")
    base = runs[()]
    rows = []
    for a, b in pairs:
        ra, rb, rab = runs[(a,)], runs[(b,)], runs[tuple(sorted((a, b)))]
        per_seed_ratios: dict[int, list[float]] = {}
        averaged: list[str] = []  # the metrics the pair's average is over
        for metric, higher in direction.items():
            # Every estimate of a cell over the same seeds, those with a number in all four task
            # sets: gains over different seed sets would not add up (a missing seed could turn
            # the cell's sign against its own excess).
            seeds = _complete_seeds((base, ra, rb, rab), metric)
            if not seeds:
                continue
            sa, sb, sab, sbase = (_restrict(r, seeds) for r in (ra, rb, rab, base))
            ga, gb, gab = (paired(r, sbase, metric, higher) for r in (sa, sb, sab))
            best_runs = sa if ga.mean >= gb.mean else sb
            best = ga if ga.mean >= gb.mean else gb
            excess = paired(sab, best_runs, metric, higher)
            defined = best.positive
            value = excess.mean / best.mean if defined else math.nan
            if defined and (average_over is None or metric in average_over):
                averaged.append(metric)
                for seed in seeds:
                    ratio = gain(sab[seed][metric], best_runs[seed][metric], higher) / best.mean
                    per_seed_ratios.setdefault(seed, []).append(ratio)
            rows.append(
                {
                    "task_a": a,
                    "task_b": b,
                    "metric": metric,
                    "synergy": value,
                    "synergy_se": excess.se / best.mean if defined else math.nan,
                    "gain_a": ga.mean,
                    "gain_a_se": ga.se,
                    "gain_b": gb.mean,
                    "gain_b_se": gb.se,
                    "gain_ab": gab.mean,
                    "gain_ab_se": gab.se,
                    "excess": excess.mean,
                    "excess_se": excess.se,
                    "defined": defined,
                    "significant": excess.significant if defined else None,
                    "seeds": excess.n,
                }
            )
        # A seed averages over every averaged column or is left out: a seed missing one column
        # would average over fewer, and the seeds' averages would not measure the same thing.
        seeds = sorted(s for s, ratios in per_seed_ratios.items() if len(ratios) == len(averaged))
        per_seed = [sum(per_seed_ratios[s]) / len(averaged) for s in seeds]
        average = Estimate.of(per_seed)
        rows.append(
            {
                "task_a": a,
                "task_b": b,
                "metric": "average",
                "synergy": average.mean,
                "synergy_se": average.se,
                "defined": average.n > 0,
                "significant": average.significant,
                "seeds": average.n,
                "columns": len(averaged),
                "seeds_left_out": len(per_seed_ratios) - len(seeds),
                # The average of each seed (what the SE is over), for analyses by seed.
                "seed_ids": seeds,
                "seed_averages": per_seed,
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None)


def synergy_wide(matrix: pl.DataFrame) -> pl.DataFrame:
    """The synergy rows in the paper's Table 4 layout: one row per pair (`pair`, e.g.
    "ssl x depth"), one column per metric, `average` last. Cells are text: the synergy, with
    '± SE' (and 'n.s.' where the excess is not significant) when there are seeds to tell, and
    after an average the number of columns it is over."""
    seeded = (
        bool(matrix.filter(pl.col("seeds") >= 2).height) if "seeds" in matrix.columns else False
    )

    def cell(row: dict) -> str:
        value = row["synergy"]
        if value is None or math.isnan(value):
            return "undefined"
        text, notes = f"{value:+.2f}", []
        if seeded and row["significant"] is None:  # fewer than two seeds in this cell: no test
            notes.append(f"{row['seeds']} seed")
        elif seeded:
            text += f" ± {row['synergy_se']:.2f}" + significance_mark(
                value, row["synergy_se"], row["significant"]
            )
        # An average says how many columns it is over: pairs may differ in where it is defined.
        if row.get("columns") is not None:
            notes.append(f"{row['columns']} columns")
        if row.get("seeds_left_out"):
            notes.append(f"{row['seeds_left_out']} seed(s) left out, missing a column")
        return text + (f" ({', '.join(notes)})" if notes else "")

    rows = [
        {"pair": f"{r['task_a']} x {r['task_b']}", "metric": r["metric"], "cell": cell(r)}
        for r in matrix.iter_rows(named=True)
    ]
    return pl.DataFrame(rows, infer_schema_length=None).pivot(
        on="metric", index="pair", values="cell"
    )


def ladder_stats(results: pl.DataFrame, ladder: Sequence[tuple[str, ...]] = LADDER) -> pl.DataFrame:
    """Table 3 as numbers: per ladder step and metric, mean and SE over seeds, and the
    increment over the previous step paired by seed (mean, SE, significant); a last step
    `Absolute gain` holds last - first."""
    runs = by_task_set(results)
    _require(runs, {tuple(sorted(s)): label(s) for s in ladder}, "ladder")
    metrics = list(_direction(results))
    rows = []
    previous: PerSeed | None = None
    for step in ladder:
        current = runs[tuple(sorted(step))]
        for metric in metrics:
            value = _values(current, metric)
            if value.n == 0:
                continue
            increment = paired(current, previous, metric) if previous is not None else None
            rows.append(_ladder_row(label(step), metric, value, increment))
        previous = current
    first, last = runs[tuple(sorted(ladder[0]))], runs[tuple(sorted(ladder[-1]))]
    for metric in metrics:
        difference = paired(last, first, metric)
        if difference.n:
            rows.append(_ladder_row("Absolute gain", metric, difference, None))
    return pl.DataFrame(rows, infer_schema_length=None)


def _ladder_row(tasks: str, metric: str, value: Estimate, increment: Estimate | None) -> dict:
    return {
        "tasks": tasks,
        "metric": metric,
        "mean": value.mean,
        "se": value.se,
        "seeds": value.n,
        "increment": None if increment is None else increment.mean,
        "increment_se": None if increment is None else increment.se,
        "increment_seeds": None if increment is None else increment.n,
        "significant": (value.significant if tasks == "Absolute gain" else None)
        if increment is None
        else increment.significant,
    }


def ladder_table(results: pl.DataFrame, ladder: Sequence[tuple[str, ...]] = LADDER) -> pl.DataFrame:
    """Table 3's layout: one row per task set of the ladder (cells 'value (+increment)', with
    '± SE' and 'n.s.' marks when there are several seeds), then the absolute gain of the last
    row over the first (signed; for lower-is-better metrics a gain is negative, as the paper
    prints RMSE)."""
    stats = ladder_stats(results, ladder)
    metrics = list(dict.fromkeys(stats["metric"].to_list()))
    rows = []
    for tasks in dict.fromkeys(stats["tasks"].to_list()):
        row: dict[str, str] = {"tasks": tasks}
        for r in stats.filter(pl.col("tasks") == tasks).iter_rows(named=True):
            value = Estimate(r["mean"], r["se"], r["seeds"])
            if tasks == "Absolute gain":
                row[r["metric"]] = value.text(signed=True)
                continue
            text = value.text(tested=False)
            if r["increment"] is not None:
                # The increment's own seed count: the seeds both steps have.
                step = Estimate(r["increment"], r["increment_se"], r["increment_seeds"])
                text += f" ({step.text(signed=True)})"
            row[r["metric"]] = text
        rows.append(row)
    return pl.DataFrame(rows).select("tasks", *[m for m in metrics if any(m in r for r in rows)])
