"""The paper's claims, tested on a sweep's runs: each claim names a comparison (a ladder step or
the synergy matrix) and the metric families it is about; the verdict follows from the paired,
per-seed differences of `mtv.analysis.synergy`, by the rules of `VERDICT_RULES` (printed in the
report under the verdicts).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import polars as pl

from mtv.analysis.synergy import (
    Estimate,
    by_task_set,
    holm,
    label,
    paired,
    significance_mark,
    synergy_table,
)

VERDICT_RULES = (
    "Each of the paper's columns counts once, through the first of its mini-suite metrics that "
    "can see: the positive control beats its random init on it (see *What the instruments can "
    "see*); a metric it shows blind, or has not judged, is left out. A family of columns is "
    "*lifted* when at least one of its metrics improves significantly and none worsens "
    "significantly, *hurt* in the opposite case, *mixed* when both happen, *unchanged* when "
    "nothing stands out of the noise, and *untested* with one seed (no standard error). A "
    "claim that a step lifts some families is *reproduced* "
    "when every family is lifted, *contradicted* when one is hurt, and *inconclusive* otherwise "
    "(also when a family has no metric that can see). The synergy claim is reproduced when every "
    "pair's average synergy is significantly positive, contradicted when one is significantly "
    "negative, inconclusive otherwise. Differences are shown in each metric's own direction, as "
    "in the ladder (an RMSE that falls is a negative difference and a gain). Each test is at "
    "p < 0.05 on its own; *corrected (Holm)* is the verdict by the same rules when the tests "
    "behind it (a step's metrics, the synergy pairs, every method x metric of the weighting "
    "claim) are corrected for their number by Holm's step-down method, which keeps the chance "
    "of any false finding among them at 0.05."
)

# The mini suite's counterparts of the paper's Table 3/4 columns (None: a measure the paper does
# not have, shown beside them), in the paper's order.
PAPER_COLUMNS: dict[str, str | None] = {
    "zero_shot/shape_top1": "IN-1k",
    "object_shape/shape_top1": "IN-1k",
    "zero_shot/color_top1": "IN-1k",
    "pooled_probe/shape_acc": None,
    "pooled_probe/color_acc": None,
    "object_shape/shape_acc": None,
    "retrieval/t2i_r1": "COCO T→I",
    "retrieval/i2t_r1": "COCO I→T",
    "segmentation/miou": "ADE20k",
    "geometric_correspondence/recall@8px": "NAVI",
    "semantic_correspondence/pck@0.1": "SPair",
    "depth_probe/rmse": "NYUv2",
    "depth_dpt_probe/rmse": "NYUv2",
    "object_depth/relief_rmse": "NYUv2",
}
HEADLINE = tuple(PAPER_COLUMNS)
# Per paper column, the metrics that stand for it in order of preference: the column counts
# once, through the first that is measured and not blind. IN-1k classifies object categories:
# shape first (whole scene, then the object zoomed), colour last (an attribute, not a category);
# NYUv2 is the paper's linear probe first, then a DPT probe, then object relief (depth where
# the floor plane cannot answer for the encoder).
COLUMN_METRICS: dict[str, tuple[str, ...]] = {
    "IN-1k": ("zero_shot/shape_top1", "object_shape/shape_top1", "zero_shot/color_top1"),
    "COCO T→I": ("retrieval/t2i_r1",),
    "COCO I→T": ("retrieval/i2t_r1",),
    "ADE20k": ("segmentation/miou",),
    "NAVI": ("geometric_correspondence/recall@8px",),
    "SPair": ("semantic_correspondence/pck@0.1",),
    "NYUv2": ("depth_probe/rmse", "depth_dpt_probe/rmse", "object_depth/relief_rmse"),
}
# Column titles of the report's tables.
SHORT_NAMES: dict[str, str] = {
    "zero_shot/shape_top1": "0-shot shape",
    "zero_shot/color_top1": "0-shot colour",
    "pooled_probe/shape_acc": "probe shape",
    "pooled_probe/color_acc": "probe colour",
    "retrieval/t2i_r1": "T→I R@1",
    "retrieval/i2t_r1": "I→T R@1",
    "segmentation/miou": "seg mIoU",
    "geometric_correspondence/recall@8px": "geo R@8px",
    "semantic_correspondence/pck@0.1": "PCK@0.1",
    "depth_probe/rmse": "depth lin. RMSE ↓",
    "depth_dpt_probe/rmse": "depth DPT RMSE ↓",
    "object_shape/shape_top1": "object 0-shot shape",
    "object_shape/shape_acc": "object probe shape",
    "object_depth/relief_rmse": "object relief RMSE ↓",
    # Not paper columns, but listed where every metric of a run is (what the control sees).
    "object_shape/color_top1": "object 0-shot colour",
    "object_shape/color_acc": "object probe colour",
    "retrieval/t2i_r5": "T→I R@5",
    "retrieval/i2t_r5": "I→T R@5",
    "geometric_correspondence/recall@4px": "geo R@4px",
    "geometric_correspondence/recall@16px": "geo R@16px",
    "depth_probe/absrel": "depth lin. AbsRel ↓",
    "depth_dpt_probe/absrel": "depth DPT AbsRel ↓",
    "relative_depth/absrel": "depth head AbsRel ↓",
    "relative_depth/delta1": "depth head δ1",
}


def short_name(metric: str) -> str:
    return SHORT_NAMES.get(metric, metric)


# The column families the claims are about.
FAMILIES: dict[str, tuple[str, ...]] = {
    "semantic": ("IN-1k", "COCO T→I", "COCO I→T"),
    "retrieval": ("COCO T→I", "COCO I→T"),
    "dense": ("ADE20k", "NAVI", "SPair", "NYUv2"),
    "pixel-level": ("ADE20k", "NYUv2"),
}
# The columns whose synergy the paper averages (Table 4).
PAPER_SYNERGY_COLUMNS = ("IN-1k", "COCO I→T", "ADE20k", "NAVI", "SPair", "NYUv2")


def column_metrics(measured: Collection[str], blind: Collection[str] = ()) -> dict[str, str | None]:
    """Paper column -> the metric that stands for it: its first candidate that was measured and
    is not blind (None when there is none)."""
    return {
        column: next((m for m in candidates if m in measured and m not in blind), None)
        for column, candidates in COLUMN_METRICS.items()
    }


def synergy_metrics(measured: Collection[str], blind: Collection[str] = ()) -> tuple[str, ...]:
    """The metrics the synergy average is over: one per Table 4 column that can be measured."""
    chosen = column_metrics(measured, blind)
    return tuple(m for c in PAPER_SYNERGY_COLUMNS if (m := chosen[c]) is not None)


# The paper's increments for ViT-B/16 on 10M samples (Table 3), by column, per ladder step;
# NYUv2 is RMSE (a decrease is a gain).
PAPER_LADDER_B16_10M: dict[str, dict[str, float]] = {
    "VL + SSL": {"IN-1k": 7.5, "COCO T→I": 4.9, "COCO I→T": 6.7, "ADE20k": 8.7, "NAVI": 2.0,
                 "SPair": 4.1, "NYUv2": -0.075},
    "VL + SSL + Ground": {"IN-1k": 5.3, "COCO T→I": 3.8, "COCO I→T": 5.3, "ADE20k": 3.3,
                          "NAVI": 1.8, "SPair": 1.3, "NYUv2": -0.031},
    "VL + SSL + Ground + Depth": {"IN-1k": 0.7, "COCO T→I": 0.4, "COCO I→T": 0.2, "ADE20k": 2.2,
                                  "NAVI": 0.3, "SPair": 0.4, "NYUv2": -0.025},
}  # fmt: skip
# Table 4, ViT-B/16 on 10M samples: synergy (%) per pair and column, and the average.
PAPER_SYNERGY_B16_10M: dict[str, dict[str, float]] = {
    "ground x ssl": {"IN-1k": 62.0, "COCO I→T": 64.4, "ADE20k": 37.9, "NAVI": 72.7, "SPair": 31.7,
                     "NYUv2": 40.8, "average": 51.7},
    "depth x ssl": {"IN-1k": 50.7, "COCO I→T": 41.8, "ADE20k": 31.0, "NAVI": -10.0, "SPair": 26.8,
                    "NYUv2": 56.6, "average": 32.9},
    "depth x ground": {"IN-1k": 22.8, "COCO I→T": 27.4, "ADE20k": 33.8, "NAVI": 36.4,
                       "SPair": 51.5, "NYUv2": 56.2, "average": 38.1},
}  # fmt: skip


@dataclass(frozen=True)
class Claim:
    text: str
    step: tuple[tuple[str, ...], tuple[str, ...]] | None  # (before, after) task groups
    families: tuple[str, ...] = ()


CLAIMS = (
    Claim("SSL lifts both semantic and dense metrics", ((), ("ssl",)), ("semantic", "dense")),
    Claim(
        "Grounding lifts retrieval and dense metrics",
        (("ssl",), ("ssl", "ground")),
        ("retrieval", "dense"),
    ),
    Claim(
        "Depth refines pixel-level metrics",
        (("ssl", "ground"), ("ssl", "ground", "depth")),
        ("pixel-level",),
    ),
    Claim("Average pairwise synergy is positive", None),
)


@dataclass
class Verdict:
    claim: str
    verdict: str  # reproduced | contradicted | inconclusive
    evidence: str  # the numbers, in words
    # The verdict by the same rules once its tests are corrected for their number (Holm); None
    # where nothing was tested.
    corrected: str | None = None


def holm_text(names: list[str], stands: list[bool | None]) -> str:
    """'; corrected for K tests (Holm): a, b stand' (or 'none stands'); '' without tests."""
    tested = [n for n, s in zip(names, stands, strict=True) if s is not None]
    if not tested:
        return ""
    standing = [n for n, s in zip(names, stands, strict=True) if s]
    return f"; corrected for {len(tested)} tests (Holm): " + (
        f"{', '.join(standing)} stand{'s' if len(standing) == 1 else ''}"
        if standing
        else "none stands"
    )


def _family_state(changes: list[tuple[str, Estimate]], significance: dict[str, bool | None]) -> str:
    """A family's state from its metrics' gains and whether each stands (`significance`: alone
    or corrected); "unmeasured" when none of its columns could be measured."""
    if not changes:
        return "unmeasured"
    flags = [(e.mean, significance[m]) for m, e in changes]
    up = sum(1 for mean, sig in flags if sig and mean > 0)
    down = sum(1 for mean, sig in flags if sig and mean < 0)
    if up and down:
        return "mixed"
    if not up and not down and all(sig is None for _, sig in flags):
        return "untested"  # one seed: no SE, so nothing can stand out of the noise
    return "lifted" if up else "hurt" if down else "unchanged"


def difference_text(metric: str, difference: float, se: float, significant: bool | None) -> str:
    """'depth lin. RMSE ↓ -0.1±0.02 n.s.': a paired difference in the metric's own direction;
    with one seed there is no SE and no test ('(1 seed)')."""
    if significant is None:
        return f"{short_name(metric)} {difference:+.3g} (1 seed)"
    return f"{short_name(metric)} {difference:+.3g}±{se:.2g}" + significance_mark(
        difference, se, significant
    )


def _step_outcome(states: list[str]) -> str:
    if all(s == "lifted" for s in states):
        return "reproduced"
    if any(s == "hurt" for s in states):
        return "contradicted"
    return "inconclusive"


def _step_verdict(
    results: pl.DataFrame, claim: Claim, columns: dict[str, tuple[str, ...]], blind_note: str
) -> Verdict:
    assert claim.step is not None
    before, after = claim.step
    runs = by_task_set(results)
    name = f"{label(after)} vs {label(before)}"
    if tuple(sorted(before)) not in runs or tuple(sorted(after)) not in runs:
        return Verdict(claim.text, "inconclusive", f"{name}: runs missing")
    direction = dict(results.select("metric", "higher_is_better").unique().iter_rows())
    families: list[tuple[str, list[tuple[str, Estimate]], list[str], list[str]]] = []
    for family in claim.families:
        changes, unseen, unpaired = [], [], []
        for column in FAMILIES[family]:
            candidates = [m for m in columns.get(column, ()) if m in direction]
            if not candidates:
                unseen.append(column)
                continue
            # The column counts once: through its first metric that both runs measured (a
            # metric missing from one of them passes the column on to the next).
            for metric in candidates:
                gain = paired(
                    runs[tuple(sorted(after))],
                    runs[tuple(sorted(before))],
                    metric,
                    direction[metric],
                )
                if gain.n:
                    changes.append((metric, gain))
                    break
            else:
                unpaired.append(column)
        families.append((family, changes, unseen, unpaired))
    tested = [(m, e) for _, changes, _, _ in families for m, e in changes]
    alone = {m: e.significant for m, e in tested}
    stands = holm([e.p_value for _, e in tested])
    # A difference that is not tested alone (equal at every seed) stays not significant.
    corrected = {
        m: stand if stand is not None else (None if alone[m] is None else False)
        for m, stand in zip(alone, stands, strict=True)
    }
    states, corrected_states, parts = [], [], []
    for family, changes, unseen, unpaired in families:
        # A family none of whose columns can be measured says nothing either way.
        state = _family_state(changes, alone)
        states.append(state)
        corrected_states.append(_family_state(changes, corrected))
        # The difference itself, not the gain: a lower-is-better metric's gain is its fall.
        shown = ", ".join(
            difference_text(m, e.mean if direction[m] else -e.mean, e.se, e.significant)
            for m, e in changes
        )
        if unseen:
            shown += ("; " if shown else "") + "no metric that can see: " + ", ".join(unseen)
        if unpaired:
            shown += ("; " if shown else "") + "not measured in both: " + ", ".join(unpaired)
        parts.append(f"{family} {state} ({shown})")
    correction = holm_text([short_name(m) for m in alone], stands)
    evidence = f"{name}, differences paired by seed: " + "; ".join(parts) + correction + blind_note
    return Verdict(
        claim.text,
        _step_outcome(states),
        evidence,
        _step_outcome(corrected_states) if correction else None,
    )


def _synergy_verdict(
    results: pl.DataFrame, claim: Claim, average_over: tuple[str, ...], blind_note: str
) -> Verdict:
    try:
        matrix = synergy_table(
            results.filter(pl.col("metric").is_in(list(average_over))), average_over=average_over
        )
    except ValueError as err:  # MissingRuns
        return Verdict(claim.text, "inconclusive", str(err))
    averages = matrix.filter(pl.col("metric") == "average")
    states, parts, pairs, tests = [], [], [], []
    for row in averages.iter_rows(named=True):
        pair = f"{row['task_a']} x {row['task_b']}"
        value, se = row["synergy"], row["synergy_se"]
        if value is None or math.isnan(value):
            states.append("undefined")
            parts.append(f"{pair}: undefined (no single task's gain stands out of the noise)")
            continue
        significant = row["significant"]
        columns = f"over {row['columns']} column(s)"
        if significant is None:
            states.append("untested")
            parts.append(f"{pair} {100 * value:+.0f}% ({columns}; 1 seed: untested)")
            continue
        states.append(_synergy_state(value, significant))
        pairs.append(pair)
        tests.append(Estimate(value, se, row["seeds"]))
        mark = significance_mark(value, se, significant)
        parts.append(f"{pair} {100 * value:+.0f}% ± {100 * se:.0f}{mark} ({columns})")
    stands = holm([estimate.p_value for estimate in tests])
    correction = holm_text(pairs, stands)
    # Only the tested pairs change state; the rest (undefined, untested) stay as they are.
    corrected_states = [s for s in states if s not in ("positive", "negative", "n.s.")] + [
        _synergy_state(e.mean, stand) for e, stand in zip(tests, stands, strict=True)
    ]
    over = ", ".join(short_name(m) for m in average_over)
    return Verdict(
        claim.text,
        _synergy_outcome(states),
        f"average synergy over the defined metrics of {over}: "
        + "; ".join(parts)
        + correction
        + blind_note,
        _synergy_outcome(corrected_states) if correction else None,
    )


def _synergy_state(value: float, significant: bool | None) -> str:
    return "positive" if significant and value > 0 else "negative" if significant else "n.s."


def _synergy_outcome(states: list[str]) -> str:
    if states and all(s == "positive" for s in states):
        return "reproduced"
    if "negative" in states:
        return "contradicted"
    return "inconclusive"


def verdicts(
    results: pl.DataFrame,
    metrics: tuple[str, ...] = HEADLINE,
    blind: Collection[str] = (),
) -> list[Verdict]:
    """One verdict per claim of the paper, from final-step results of the ladder and synergy
    runs (rows with run, seed, tasks, metric, value, higher_is_better). Each paper column counts
    once, through its first metric in `metrics` that is not in `blind` (the metrics the positive
    control does not show to see); the evidence names the ones left out."""
    columns = {
        column: tuple(m for m in candidates if m in metrics and m not in blind)
        for column, candidates in COLUMN_METRICS.items()
    }
    left_out = [m for m in metrics if m in blind and PAPER_COLUMNS.get(m)]
    blind_note = (
        f" (left out, the control not showing them to see: {', '.join(map(short_name, left_out))})"
        if left_out
        else ""
    )
    out = []
    for claim in CLAIMS:
        if claim.step is None:
            chosen = synergy_metrics(metrics, blind)
            out.append(_synergy_verdict(results, claim, chosen, blind_note))
        else:
            out.append(_step_verdict(results, claim, columns, blind_note))
    return out
