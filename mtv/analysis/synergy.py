"""The paper's two analysis tables, from evaluation results of a set of runs.

Results are rows of (run, tasks, metric, value, higher_is_better), `tasks` being the run's task
kinds. Task kinds are grouped as the paper groups them: `ssl` = distill + masked + koleo,
`ground`, `depth`; `vl` is the baseline every run shares.

- Ladder (Table 3): rows = task sets in ladder order, columns = metrics, each value with its
  increment over the previous row in parentheses, and an absolute-gain row (last - first).
- Synergy (Table 4, Eq. 4): for groups A and B with gains dA, dB, dAB over the VL baseline,
      Synergy(A, B) = (dAB - max(dA, dB)) / max(dA, dB),
  where for lower-is-better metrics a gain is a decrease. When neither A nor B alone improves
  on the baseline (max <= 0) the ratio has no meaning and is reported as undefined (NaN).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import polars as pl

GROUPS: dict[str, frozenset[str]] = {
    "ssl": frozenset({"distill", "masked", "koleo"}),
    "ground": frozenset({"ground"}),
    "depth": frozenset({"depth"}),
}
LADDER: tuple[tuple[str, ...], ...] = ((), ("ssl",), ("ssl", "ground"), ("ssl", "ground", "depth"))


class MissingRuns(ValueError):
    """The runs needed for a table are not all there (each missing task set is named)."""


def task_groups(kinds: Iterable[str]) -> tuple[str, ...]:
    """A run's task kinds as paper groups, e.g. (vl, distill, masked, koleo, depth) ->
    ('depth', 'ssl'). A group counts only when all its kinds are present."""
    kinds = set(kinds)
    return tuple(sorted(name for name, members in GROUPS.items() if members <= kinds))


def label(groups: Sequence[str]) -> str:
    return " + ".join(["VL", *(g.capitalize() if g != "ssl" else "SSL" for g in groups)])


def _by_groups(results: pl.DataFrame) -> dict[tuple[str, ...], pl.DataFrame]:
    out: dict[tuple[str, ...], pl.DataFrame] = {}
    for tasks, frame in results.group_by("tasks", maintain_order=True):
        groups = task_groups(tasks[0])
        if groups in out:
            raise ValueError(f"two runs have the task set {label(groups)}; keep one per set")
        out[groups] = frame
    return out


def _metric_values(frame: pl.DataFrame) -> dict[str, float]:
    return dict(zip(frame["metric"].to_list(), frame["value"].to_list(), strict=True))


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


def synergy_table(
    results: pl.DataFrame, pairs: Sequence[tuple[str, str]] | None = None
) -> pl.DataFrame:
    """Rows (task_a, task_b, metric, synergy) for every pair and metric, plus an `average` row
    per pair (the mean over metrics where synergy is defined)."""
    runs = _by_groups(results)
    direction = _direction(results)
    pairs = pairs or list(itertools.combinations(sorted(GROUPS), 2))
    needed = {(): "the VL baseline"}
    for a, b in pairs:
        needed |= {
            (a,): label((a,)),
            (b,): label((b,)),
            tuple(sorted((a, b))): label(sorted((a, b))),
        }
    missing = sorted(name for groups, name in needed.items() if groups not in runs)
    if missing:
        raise MissingRuns("missing runs for the synergy table: " + ", ".join(missing))
    base = _metric_values(runs[()])
    rows = []
    for a, b in pairs:
        va, vb = _metric_values(runs[(a,)]), _metric_values(runs[(b,)])
        vab = _metric_values(runs[tuple(sorted((a, b)))])
        values = []
        for metric, higher in direction.items():
            if not all(metric in v for v in (base, va, vb, vab)):
                continue
            s = synergy(
                gain(va[metric], base[metric], higher),
                gain(vb[metric], base[metric], higher),
                gain(vab[metric], base[metric], higher),
            )
            values.append(s)
            rows.append({"task_a": a, "task_b": b, "metric": metric, "synergy": s})
        defined = [v for v in values if not math.isnan(v)]
        average = sum(defined) / len(defined) if defined else math.nan
        rows.append({"task_a": a, "task_b": b, "metric": "average", "synergy": average})
    return pl.DataFrame(rows)


def synergy_wide(matrix: pl.DataFrame) -> pl.DataFrame:
    """The synergy rows in the paper's Table 4 layout: one row per pair (`pair`, e.g.
    "ssl x depth"), one column per metric, `average` last."""
    return matrix.with_columns((pl.col("task_a") + " x " + pl.col("task_b")).alias("pair")).pivot(
        on="metric", index="pair", values="synergy"
    )


def ladder_table(results: pl.DataFrame, ladder: Sequence[tuple[str, ...]] = LADDER) -> pl.DataFrame:
    """Table 3: one row per task set of the ladder (cells 'value (+increment)'), then the
    absolute gain of the last row over the first (signed; for lower-is-better metrics a gain is
    negative, as the paper prints RMSE)."""
    runs = _by_groups(results)
    missing = [label(step) for step in ladder if tuple(sorted(step)) not in runs]
    if missing:
        raise MissingRuns("missing runs for the ladder: " + ", ".join(missing))
    metrics = list(_direction(results))
    rows, previous = [], None
    for step in ladder:
        values = _metric_values(runs[tuple(sorted(step))])
        row = {"tasks": label(step)}
        for metric in metrics:
            value = values.get(metric, math.nan)
            text = f"{value:.4g}"
            if previous is not None and metric in previous:
                text += f" ({value - previous[metric]:+.3g})"
            row[metric] = text
        rows.append(row)
        previous = values
    first = _metric_values(runs[tuple(sorted(ladder[0]))])
    last = _metric_values(runs[tuple(sorted(ladder[-1]))])
    rows.append(
        {
            "tasks": "Absolute gain",
            **{m: f"{last[m] - first[m]:+.3g}" for m in metrics if m in first and m in last},
        }
    )
    return pl.DataFrame(rows)
