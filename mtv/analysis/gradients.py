"""Does early-training gradient agreement predict synergy? For each pair of task groups, the
cosine between the groups' gradients at the shared encoder early in the run that trains both
(from `runtime.grad_probe_every`'s logged norms and pairwise cosines), beside the pair's
measured synergy (Eq. 4), and a rank correlation between the two over (pair, seed) points.

A group's gradient is the sum of its tasks' (SSL = distill + masked + koleo), so its cosine
with another group follows exactly from the logged per-task norms |g_i| and cosines c_ij:
g_i . g_j = c_ij |g_i| |g_j|, and norms and dot products of sums are sums of those.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from mtv.analysis.synergy import GROUPS, Estimate, task_groups

EARLY_FRACTION = 0.25  # "early": probes in the first quarter of the run's steps
PERMUTATIONS = 20_000  # of the rank-correlation test (seeded: the same p on every rerun)
EXACT_UP_TO = 9  # points up to which every pairing is enumerated (9! = 362,880)


def _dot(row: Mapping[str, float | None], a: str, b: str) -> float | None:
    norm_a, norm_b = row.get(f"grad_norm/{a}"), row.get(f"grad_norm/{b}")
    if norm_a is None or norm_b is None:
        return None
    if a == b:
        return norm_a * norm_a
    cosine = row.get(f"grad_cos/{a}~{b}", row.get(f"grad_cos/{b}~{a}"))
    return None if cosine is None else cosine * norm_a * norm_b


def group_cosine(
    row: Mapping[str, float | None], tasks_a: Sequence[str], tasks_b: Sequence[str]
) -> float | None:
    """The cosine between the summed encoder gradients of `tasks_a` and of `tasks_b`, from one
    probe's logged norms and pairwise cosines; None when one is missing or a sum is zero."""

    def dot(xs: Sequence[str], ys: Sequence[str]) -> float | None:
        parts = [_dot(row, x, y) for x in xs for y in ys]
        return None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]

    across, norm_a, norm_b = dot(tasks_a, tasks_b), dot(tasks_a, tasks_a), dot(tasks_b, tasks_b)
    if across is None or norm_a is None or norm_b is None or norm_a <= 0 or norm_b <= 0:
        return None
    return across / math.sqrt(norm_a * norm_b)


def early_cosine(
    metrics: pl.DataFrame,
    tasks_a: Sequence[str],
    tasks_b: Sequence[str],
    fraction: float = EARLY_FRACTION,
) -> float | None:
    """The mean group cosine over a run's probes in its first `fraction` of steps (a run's
    `metrics.parquet`); None when the run was not probed there."""
    if "step" not in metrics.columns or not metrics.height:
        return None
    last = int(metrics["step"].max())  # type: ignore[arg-type]
    early = metrics.filter(pl.col("step") <= max(1, round(fraction * last)))
    values = [
        c
        for row in early.iter_rows(named=True)
        if (c := group_cosine(row, tasks_a, tasks_b)) is not None
    ]
    return sum(values) / len(values) if values else None


def _ranks(values: Sequence[float]) -> list[float]:
    """0-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2
        start = end + 1
    return out


def _centred_ranks(values: Sequence[float]) -> np.ndarray:
    ranks = np.asarray(_ranks(values))
    return ranks - ranks.mean()


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 points or
    a constant side."""
    if len(x) < 3:
        return math.nan
    dx, dy = _centred_ranks(x), _centred_ranks(y)
    norm = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / norm if norm > 0 else math.nan


def permutation_p(x: Sequence[float], y: Sequence[float], seed: int = 0) -> float:
    """Two-sided p of Spearman's rho against shuffled pairings: exact over all n! pairings up
    to `EXACT_UP_TO` points, else seeded Monte Carlo with the observed pairing counted (so p is
    never 0). Few points bound it from below: 3 points cannot give less than 1/3."""
    observed = abs(spearman(x, y))
    if math.isnan(observed):
        return math.nan
    dx, dy = _centred_ranks(x), _centred_ranks(y)
    # Re-pairing permutes y's centred ranks; the norms stay, so |dx . dy| alone decides.
    threshold = observed * math.sqrt(float(dx @ dx) * float(dy @ dy)) - 1e-9
    if len(x) <= EXACT_UP_TO:
        pairings = np.asarray(list(itertools.permutations(range(len(x)))))
        return float(np.mean(np.abs(dy[pairings] @ dx) >= threshold))
    rng = np.random.default_rng(seed)
    pairings = rng.permuted(np.tile(np.arange(len(x)), (PERMUTATIONS, 1)), axis=1)
    extreme = int(np.sum(np.abs(dy[pairings] @ dx) >= threshold))
    return (extreme + 1) / (PERMUTATIONS + 1)


def smallest_permutation_p(n: int) -> float:
    """The smallest p `permutation_p` can give for n untied points: the perfect ordering and
    its reverse among the n! pairings, or the observed pairing alone in the Monte Carlo."""
    return 2 / math.factorial(n) if n <= EXACT_UP_TO else 1 / (PERMUTATIONS + 1)


def gradient_synergy(final: pl.DataFrame, matrix: pl.DataFrame) -> pl.DataFrame:
    """Per pair of groups and seed of the run that trains both (in `final`'s runs): the early
    gradient cosine between the two groups, and that seed's synergy average (the synergy
    table's `seed_averages`; null where the pair's synergy is undefined, e.g. no single task's
    gain stands out of the noise). Columns: pair, seed, cosine, synergy."""
    averages = matrix.filter(pl.col("metric") == "average")
    runs: dict[tuple[tuple[str, ...], int], str] = {}
    for (run, seed), frame in final.group_by("run", "seed"):
        runs[(task_groups(frame["tasks"][0]), int(seed))] = str(run)  # type: ignore[arg-type]
    rows = []
    for row in averages.iter_rows(named=True):
        a, b = row["task_a"], row["task_b"]
        synergies = dict(zip(row["seed_ids"] or [], row["seed_averages"] or [], strict=True))
        pair = tuple(sorted((a, b)))
        for seed in sorted(s for groups, s in runs if groups == pair):
            run = Path(runs[(pair, seed)])
            if not (run / "metrics.parquet").is_file():
                continue
            metrics = pl.read_parquet(run / "metrics.parquet")
            cosine = early_cosine(metrics, sorted(GROUPS[a]), sorted(GROUPS[b]))
            if cosine is not None:
                rows.append(
                    {
                        "pair": f"{a} x {b}",
                        "seed": seed,
                        "cosine": cosine,
                        "synergy": synergies.get(seed),
                    }
                )
    schema = {"pair": pl.String, "seed": pl.Int64, "cosine": pl.Float64, "synergy": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def gradient_synergy_summary(points: pl.DataFrame) -> tuple[pl.DataFrame, float, float, int]:
    """Per pair: early cosine and synergy (mean, SE over seeds; synergy over the seeds where it
    is defined); and Spearman's rho between cosine and synergy over every (pair, seed) point
    with a defined synergy, its permutation p and that point count."""
    rows = []
    for (pair,), frame in points.group_by("pair", maintain_order=True):
        cosine = Estimate.of(frame["cosine"].to_list())
        synergy = Estimate.of(frame["synergy"].drop_nulls().to_list())
        rows.append(
            {
                "pair": pair,
                "cosine": cosine.mean,
                "cosine_se": cosine.se,
                "seeds": cosine.n,
                "synergy": synergy.mean,
                "synergy_se": synergy.se,
                "synergy_seeds": synergy.n,
            }
        )
    # A NaN (a metric missing at a seed upstream) has no rank: it would be ordered arbitrarily.
    defined = points.filter(
        pl.col("synergy").is_not_null()
        & pl.col("synergy").is_not_nan()
        & pl.col("cosine").is_not_null()
        & pl.col("cosine").is_not_nan()
    )
    x, y = defined["cosine"].to_list(), defined["synergy"].to_list()
    rho = spearman(x, y)
    return pl.DataFrame(rows, infer_schema_length=None), rho, permutation_p(x, y), len(x)
