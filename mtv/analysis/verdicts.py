"""The paper's claims, tested on a sweep's runs: each claim names a comparison (a ladder step or
the synergy matrix) and the metric families it is about; the verdict follows from the paired,
per-seed differences of `mtv.analysis.synergy`, by the rules of `VERDICT_RULES` (printed in the
report under the verdicts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from mtv.analysis.synergy import by_task_set, label, paired, synergy_table

VERDICT_RULES = (
    "A family of metrics is *lifted* when at least one of its metrics improves significantly and "
    "none worsens significantly, *hurt* in the opposite case, *mixed* when both happen, and "
    "*unchanged* when nothing stands out of the noise. A claim that a step lifts some families "
    "is *reproduced* when every family is lifted, *contradicted* when one is hurt, and "
    "*inconclusive* otherwise. The synergy claim is reproduced when every pair's average "
    "synergy is significantly positive, contradicted when one is significantly negative, "
    "inconclusive otherwise. Differences are shown in each metric's own direction, as in the "
    "ladder (an RMSE that falls is a negative difference and a gain)."
)

# The mini suite's counterparts of the paper's Table 3/4 columns (and the pooled-embedding
# probes, a global measure the paper does not have), in the paper's order. NYUv2's linear depth
# probe has two: the paper's linear probe, and a DPT probe on frozen features, which can see
# depth where per-patch tokens do not carry their position (see mtv.eval.probes).
PAPER_COLUMNS: dict[str, str | None] = {
    "zero_shot/shape_top1": "IN-1k",
    "zero_shot/color_top1": "IN-1k",
    "pooled_probe/shape_acc": None,
    "pooled_probe/color_acc": None,
    "retrieval/t2i_r1": "COCO T→I",
    "retrieval/i2t_r1": "COCO I→T",
    "segmentation/miou": "ADE20k",
    "geometric_correspondence/recall@8px": "NAVI",
    "semantic_correspondence/pck@0.1": "SPair",
    "depth_probe/rmse": "NYUv2",
    "depth_dpt_probe/rmse": "NYUv2",
}
HEADLINE = tuple(PAPER_COLUMNS)
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
}


def short_name(metric: str) -> str:
    return SHORT_NAMES.get(metric, metric)


# The metric families the claims are about: the counterparts of the paper's own columns only
# (the pooled-embedding probes and the DPT depth probe are shown beside them, not counted).
FAMILIES: dict[str, tuple[str, ...]] = {
    "semantic": (
        "zero_shot/shape_top1",
        "zero_shot/color_top1",
        "retrieval/t2i_r1",
        "retrieval/i2t_r1",
    ),
    "retrieval": ("retrieval/t2i_r1", "retrieval/i2t_r1"),
    "dense": (
        "segmentation/miou",
        "geometric_correspondence/recall@8px",
        "semantic_correspondence/pck@0.1",
        "depth_probe/rmse",
    ),
    "pixel-level": ("segmentation/miou", "depth_probe/rmse"),
}
# The metrics whose synergy the paper averages (Table 4: IN-1k, COCO I→T, ADE20k, NAVI, SPair,
# NYUv2), by their counterparts.
PAPER_SYNERGY_METRICS = (
    "zero_shot/shape_top1",
    "zero_shot/color_top1",
    "retrieval/i2t_r1",
    "segmentation/miou",
    "geometric_correspondence/recall@8px",
    "semantic_correspondence/pck@0.1",
    "depth_probe/rmse",
)
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


def _family_state(changes: list[tuple[str, float, float, bool | None]]) -> str:
    up = sum(1 for _, mean, _, sig in changes if sig and mean > 0)
    down = sum(1 for _, mean, _, sig in changes if sig and mean < 0)
    if up and down:
        return "mixed"
    return "lifted" if up else "hurt" if down else "unchanged"


def _step_verdict(results: pl.DataFrame, claim: Claim, metrics: tuple[str, ...]) -> Verdict:
    assert claim.step is not None
    before, after = claim.step
    runs = by_task_set(results)
    name = f"{label(after)} vs {label(before)}"
    if tuple(sorted(before)) not in runs or tuple(sorted(after)) not in runs:
        return Verdict(claim.text, "inconclusive", f"{name}: runs missing")
    direction = dict(results.select("metric", "higher_is_better").unique().iter_rows())
    states, parts = [], []
    for family in claim.families:
        changes = []
        for metric in FAMILIES[family]:
            if metric not in metrics or metric not in direction:
                continue
            gain = paired(
                runs[tuple(sorted(after))], runs[tuple(sorted(before))], metric, direction[metric]
            )
            if gain.n:
                changes.append((metric, gain.mean, gain.se, gain.significant))
        state = _family_state(changes)
        states.append(state)
        # The difference itself, not the gain: a lower-is-better metric's gain is its fall.
        shown = ", ".join(
            f"{short_name(m)} {mean if direction[m] else -mean:+.3g}±{se:.2g}"
            f"{'' if sig else ' n.s.'}"
            for m, mean, se, sig in changes
        )
        parts.append(f"{family} {state} ({shown})")
    if all(s == "lifted" for s in states):
        verdict = "reproduced"
    elif any(s == "hurt" for s in states):
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return Verdict(claim.text, verdict, f"{name}, differences paired by seed: " + "; ".join(parts))


def _synergy_verdict(results: pl.DataFrame, claim: Claim, metrics: tuple[str, ...]) -> Verdict:
    try:
        matrix = synergy_table(
            results.filter(pl.col("metric").is_in(list(metrics))),
            average_over=PAPER_SYNERGY_METRICS,
        )
    except ValueError as err:  # MissingRuns
        return Verdict(claim.text, "inconclusive", str(err))
    averages = matrix.filter(pl.col("metric") == "average")
    states, parts = [], []
    for row in averages.iter_rows(named=True):
        pair = f"{row['task_a']} x {row['task_b']}"
        value, se = row["synergy"], row["synergy_se"]
        if value is None or math.isnan(value):
            states.append("undefined")
            parts.append(f"{pair}: undefined (no single task's gain stands out of the noise)")
            continue
        significant = row["significant"]
        states.append(
            "positive" if significant and value > 0 else "negative" if significant else "n.s."
        )
        parts.append(f"{pair} {100 * value:+.0f}% ± {100 * se:.0f}{'' if significant else ' n.s.'}")
    if states and all(s == "positive" for s in states):
        verdict = "reproduced"
    elif "negative" in states:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return Verdict(
        claim.text, verdict, "average synergy over the defined metrics: " + "; ".join(parts)
    )


def verdicts(results: pl.DataFrame, metrics: tuple[str, ...] = HEADLINE) -> list[Verdict]:
    """One verdict per claim of the paper, from final-step results of the ladder and synergy
    runs (rows with run, seed, tasks, metric, value, higher_is_better)."""
    out = []
    for claim in CLAIMS:
        if claim.step is None:
            out.append(_synergy_verdict(results, claim, metrics))
        else:
            out.append(_step_verdict(results, claim, metrics))
    return out
