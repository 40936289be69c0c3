"""The paper's loss-weighting claim (Sec. 4.4: "uniform loss weighting yields stable convergence
and competitive performance"), tested on a sweep's runs: the full task set under uniform
weights against the same task set under other `optim.weighting` methods, paired by seed, on one
metric per paper column (none of them blind), and the uniform runs' own training histories.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import polars as pl

from mtv.analysis.sweep_report import experiment_seeds
from mtv.analysis.synergy import Estimate, PerSeed, holm, paired
from mtv.analysis.training import vl_stalls
from mtv.analysis.verdicts import (
    Verdict,
    column_metrics,
    difference_text,
    holm_text,
    short_name,
)

CLAIM = "Uniform loss weighting converges stably and is competitive"
WEIGHTING_RULES = (
    "A uniform run converges stably when no step was non-finite and its total loss over the "
    "last quarter of the run is below that over the first. Uniform weighting is *competitive* "
    "when every other method is compared with it on every paper column's metric that can see "
    "(paired by seed, at least two seeds, Student's t, p < 0.05) and beats it significantly on "
    "none. The claim is *reproduced* when every uniform run converges stably and uniform "
    "weighting is competitive, *contradicted* when a uniform run does not converge stably (a "
    "non-finite step, or a loss that does not fall) or a method beats it somewhere without "
    "losing anywhere, *inconclusive* otherwise (also when a method's runs are missing or too "
    "few seeds pair up to test). With few seeds, competitive means that no difference stands "
    "out of the noise, not that the methods are shown equal: each difference is listed with its "
    "standard error, so that a reader sees how large a gap the test could miss."
)


def nonfinite_steps(metrics: pl.DataFrame) -> int:
    """How many logged steps of a run's history (its metrics.parquet, as the trainer writes it:
    `skipped` a boolean, `nonfinite` the comma-joined names of the tasks whose loss was not
    finite, empty when all were) were not finite: skipped, naming a task, or with a total loss
    that is NaN or infinite."""
    flags = [pl.lit(False)]
    if "loss" in metrics.columns:
        flags.append(~pl.col("loss").is_finite().fill_null(True))
    if "skipped" in metrics.columns:
        flags.append(pl.col("skipped").fill_null(False))
    if "nonfinite" in metrics.columns:
        flags.append(pl.col("nonfinite").fill_null("") != "")
    return int(metrics.select(pl.any_horizontal(flags).sum()).item())


def converges_stably(metrics: pl.DataFrame) -> tuple[bool | None, str]:
    """Whether a run's history (its metrics.parquet) shows stable convergence (None: too short a
    history to tell), and why."""
    nonfinite = nonfinite_steps(metrics)
    if nonfinite:
        return False, f"{nonfinite} non-finite step(s)"
    if "loss" not in metrics.columns:
        return None, "no loss in its history"
    losses = metrics["loss"].drop_nulls().to_list()
    if len(losses) < 4:
        return None, f"{len(losses)} logged loss(es): too short a history to tell"
    quarter = len(losses) // 4
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    if last >= first:
        return False, f"loss {first:.3g} in the first quarter, {last:.3g} in the last"
    return True, f"loss {first:.3g} -> {last:.3g}"


def _compare(
    other: PerSeed, base: PerSeed, metrics: Sequence[str], direction: dict[str, bool]
) -> tuple[list[tuple[str, Estimate]], list[str]]:
    """(tested metrics with their paired gain, untested metrics) of one method against uniform."""
    tested, untested = [], []
    for metric in metrics:
        estimate = paired(other, base, metric, direction[metric])
        if estimate.significant is None:
            # Fewer than two paired seeds: no test, so no evidence either way.
            untested.append(f"{short_name(metric)} ({estimate.n} seed(s) paired)")
        else:
            tested.append((metric, estimate))
    return tested, untested


def _method_state(gains: list[tuple[Estimate, bool | None]]) -> tuple[str, bool]:
    """(state, beats uniform somewhere without losing anywhere) of one method, from its gains
    over uniform and whether each stands."""
    wins = sum(1 for e, stands in gains if stands and e.mean > 0)
    losses = sum(1 for e, stands in gains if stands and e.mean < 0)
    state = (
        "beats uniform"
        if wins and not losses
        else "mixed"
        if wins
        else "not better"
        if gains
        else "untested"
    )
    return state, wins > 0 and losses == 0


def _weighting_outcome(unstable: bool, beaten: bool, settled: bool, states: list[str]) -> str:
    if unstable or beaten:
        return "contradicted"
    if settled and all(s == "not better" for s in states):
        return "reproduced"
    return "inconclusive"


def weighting_verdict(
    final: pl.DataFrame,
    uniform: str,
    alternatives: Sequence[str],
    blind: Collection[str] = (),
    stalls: pl.DataFrame | None = None,
    metrics: Collection[str] | None = None,
) -> Verdict:
    """The verdict on the claim from the final rows of the uniform experiment and its
    alternatives (experiment names; rows with run, seed, metric, value, higher_is_better);
    `stalls`: the runs' `vl_stalls`, when the caller has them already; `metrics`: the metrics
    the paper columns may be read from (default: every one measured), those in `blind` never."""
    runs = sorted(final.filter(pl.col("experiment") == uniform)["run"].unique().to_list())
    present = [a for a in alternatives if final.filter(pl.col("experiment") == a).height]
    missing = [a for a in alternatives if a not in present]
    if not runs or not present:
        return Verdict(
            CLAIM, "inconclusive", "runs missing: " + ", ".join([uniform] if not runs else missing)
        )
    stability = {
        run: converges_stably(pl.read_parquet(Path(run) / "metrics.parquet")) for run in runs
    }
    unstable = [f"{Path(r).name}: {why}" for r, (ok, why) in stability.items() if ok is False]
    unknown = [f"{Path(r).name}: {why}" for r, (ok, why) in stability.items() if ok is None]
    direction = dict(final.select("metric", "higher_is_better").unique().iter_rows())
    measured = set(direction) if metrics is None else set(direction) & set(metrics)
    chosen = [m for m in column_metrics(measured, blind).values() if m is not None]
    base = experiment_seeds(final, uniform)
    compared = {
        name: _compare(experiment_seeds(final, name), base, chosen, direction) for name in present
    }
    every_test = [e for tested, _ in compared.values() for _, e in tested]
    standing = holm([e.p_value for e in every_test])
    stands = iter(standing)
    open_questions = [*missing, *(n for n, (t, u) in compared.items() if u or not t)]
    beaten = beaten_corrected = False
    states, corrected_states, parts, names = [], [], [], []
    for name, (tested, untested) in compared.items():
        state, wins = _method_state([(e, e.significant) for _, e in tested])
        # Not tested alone (equal at every seed): not significant after correction either.
        corrected, wins_corrected = _method_state([(e, next(stands) or False) for _, e in tested])
        # "Without losing anywhere" needs every column tested: an untested one might lose.
        beaten = beaten or (wins and not untested)
        beaten_corrected = beaten_corrected or (wins_corrected and not untested)
        states.append(state)
        corrected_states.append(corrected)
        names += [f"{name} {short_name(m)}" for m, _ in tested]
        shown = [
            difference_text(m, e.mean if direction[m] else -e.mean, e.se, e.significant)
            for m, e in tested
        ]
        parts.append(
            f"{name} − {uniform}: {state} ({', '.join(shown) or 'no metric tested'})"
            + (f"; untested: {', '.join(untested)}" if untested else "")
        )
    if missing:
        parts.append("runs missing: " + ", ".join(missing))
    settled = not unknown and not open_questions
    verdict = _weighting_outcome(bool(unstable), beaten, settled, states)
    corrected_verdict = _weighting_outcome(
        bool(unstable), beaten_corrected, settled, corrected_states
    )
    correction = holm_text(names, standing)
    stable_text = (
        f"uniform runs not converging stably: {'; '.join(unstable)}"
        if unstable
        else f"uniform runs too short to judge: {'; '.join(unknown)}"
        if unknown
        else f"all {len(runs)} uniform runs converge stably"
    )
    # Said beside the verdict, not counted in it: a VL stall is an optimisation event the rule
    # does not define as instability, but a reader weighing "stable" should see it.
    weighed = pl.col("experiment").is_in([uniform, *present])
    stalls = vl_stalls(final.filter(weighed)) if stalls is None else stalls
    stalled = [
        f"{r['experiment']} seed {r['seed']} (steps {r['first']}–{r['last']})"
        for r in stalls.filter(pl.col("stalled") & weighed).iter_rows(named=True)
    ]
    stall_text = f"; VL stalled at L0 in: {', '.join(stalled)}" if stalled else ""
    return Verdict(
        CLAIM,
        verdict,
        stable_text + "; " + "; ".join(parts) + correction + stall_text,
        corrected_verdict if correction else None,
    )
