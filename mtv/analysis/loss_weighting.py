"""The paper's loss-weighting claim (Sec. 4.4: "uniform loss weighting yields stable convergence
and competitive performance"), tested on a sweep's runs: the full task set under uniform
weights against the same task set under other `optim.weighting` methods, paired by seed, on one
metric per paper column (none of them blind), and the uniform runs' own training histories.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from pathlib import Path

import polars as pl

from mtv.analysis.sweep_report import experiment_seeds
from mtv.analysis.synergy import paired
from mtv.analysis.verdicts import Verdict, column_metrics, short_name

CLAIM = "Uniform loss weighting converges stably and is competitive"
WEIGHTING_RULES = (
    "A uniform run converges stably when no step was non-finite and its total loss over the "
    "last quarter of the run is below that over the first. Uniform weighting is *competitive* "
    "when no other method beats it significantly (paired by seed, Student's t, p < 0.05) on "
    "any paper column's metric that can see. The claim is *reproduced* when every uniform run "
    "converges stably and uniform weighting is competitive, *contradicted* when a uniform run "
    "diverges or a method beats it somewhere without losing anywhere, *inconclusive* otherwise."
)


def converges_stably(metrics: pl.DataFrame) -> tuple[bool, str]:
    """Whether a run's history (its metrics.parquet) shows stable convergence, and why not."""
    nonfinite = int(metrics["nonfinite"].fill_null(0).sum()) if "nonfinite" in metrics else 0
    if nonfinite:
        return False, f"{nonfinite} non-finite step(s)"
    losses = metrics["loss"].drop_nulls().to_list()
    if len(losses) < 4:
        return False, f"{len(losses)} logged loss(es): too short a history to tell"
    quarter = len(losses) // 4
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    if not math.isfinite(last) or last >= first:
        return False, f"loss {first:.3g} in the first quarter, {last:.3g} in the last"
    return True, f"loss {first:.3g} -> {last:.3g}"


def weighting_verdict(
    final: pl.DataFrame,
    uniform: str,
    alternatives: Sequence[str],
    blind: Collection[str] = (),
) -> Verdict:
    """The verdict on the claim from the final rows of the uniform experiment and its
    alternatives (experiment names; rows with run, seed, metric, value, higher_is_better)."""
    runs = sorted(final.filter(pl.col("experiment") == uniform)["run"].unique().to_list())
    present = [a for a in alternatives if final.filter(pl.col("experiment") == a).height]
    if not runs or not present:
        missing = [uniform] if not runs else [a for a in alternatives if a not in present]
        return Verdict(CLAIM, "inconclusive", "runs missing: " + ", ".join(missing))
    stability = {
        run: converges_stably(pl.read_parquet(Path(run) / "metrics.parquet")) for run in runs
    }
    unstable = [f"{Path(r).name}: {why}" for r, (ok, why) in stability.items() if not ok]
    direction = dict(final.select("metric", "higher_is_better").unique().iter_rows())
    metrics = [m for m in column_metrics(set(direction), blind).values() if m is not None]
    base = experiment_seeds(final, uniform)
    beaten, parts = False, []
    for name in present:
        other = experiment_seeds(final, name)
        wins, losses, shown = 0, 0, []
        for metric in metrics:
            higher = direction[metric]
            estimate = paired(other, base, metric, higher)
            if not estimate.n:
                continue
            better = estimate.significant and estimate.mean > 0
            worse = estimate.significant and estimate.mean < 0
            wins, losses = wins + bool(better), losses + bool(worse)
            difference = estimate.mean if higher else -estimate.mean
            shown.append(
                f"{short_name(metric)} {difference:+.3g}±{estimate.se:.2g}"
                + ("" if estimate.significant else " n.s.")
            )
        beaten = beaten or (wins > 0 and losses == 0)
        state = "beats uniform" if wins and not losses else "mixed" if wins else "not better"
        parts.append(f"{name} − {uniform}: {state} ({', '.join(shown)})")
    if unstable or beaten:
        verdict = "contradicted"
    elif all("not better" in p for p in parts):
        verdict = "reproduced"
    else:
        verdict = "inconclusive"
    stable_text = (
        f"uniform runs unstable: {'; '.join(unstable)}"
        if unstable
        else f"all {len(runs)} uniform runs converge stably"
    )
    return Verdict(CLAIM, verdict, stable_text + "; " + "; ".join(parts))
