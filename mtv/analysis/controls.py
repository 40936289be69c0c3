"""Which instruments can see: an instrument is tested on a *positive control*, an encoder trained
directly for what the instrument measures (`experiments/control.yaml`: supervised colour and
shape of each object, exact depth). Where that encoder does not beat its own random-init weights
significantly, the instrument cannot tell a trained encoder from an untrained one at this scale,
whatever it is asked about: it is *blind*, and the verdicts leave it out.

The comparison is paired by seed (the control run of seed s against the random-init encoder of
seed s, evaluated by the same evaluator on the same scenes), in the metric's own direction, and
significant by Student's t with the seeds' degrees of freedom (`mtv.analysis.synergy`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import polars as pl

from mtv.analysis.synergy import Estimate, gain


def instrument_sight(final: pl.DataFrame, control: str) -> pl.DataFrame:
    """Per metric of the control experiment's final rows (`experiment` == `control`, with
    `value`, `random_init`, `higher_is_better`, `seed`): the control's gain over its random init
    paired by seed (mean, se, seeds), and `sees`: the gain is positive and significant (with
    one seed: positive). A metric without random-init values, or whose gain is equal at every
    seed, cannot be judged (`sees` None)."""
    rows = []
    frame = final.filter(pl.col("experiment") == control)
    for (metric,), part in frame.group_by("metric", maintain_order=True):
        higher = bool(part["higher_is_better"][0])
        gains = [
            gain(float(value), float(reference), higher)
            for value, reference in zip(part["value"], part["random_init"], strict=True)
            if value is not None and reference is not None and not math.isnan(reference)
        ]
        estimate = Estimate.of(gains)
        # A gain equal at every seed has no spread to test against (`Estimate.significant`):
        # not judged, rather than called blind on a coincidence of rounding.
        sees = None if estimate.n == 0 or estimate.equal_at_every_seed else estimate.positive
        rows.append(
            {
                "metric": metric,
                "control": float(part["value"].mean()),  # type: ignore[arg-type]
                "random_init": (
                    float(part["random_init"].drop_nulls().mean())  # type: ignore[arg-type]
                    if part["random_init"].drop_nulls().len()
                    else None
                ),
                "gain": estimate.mean,
                "gain_se": estimate.se,
                "seeds": estimate.n,
                "sees": sees,
            }
        )
    schema = {
        "metric": pl.String,
        "control": pl.Float64,
        "random_init": pl.Float64,
        "gain": pl.Float64,
        "gain_se": pl.Float64,
        "seeds": pl.Int64,
        "sees": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema)


def blind_metrics(sight: pl.DataFrame) -> frozenset[str]:
    """The metrics the positive control shows to be blind (`sees` False; unjudged ones are not
    in it)."""
    return frozenset(sight.filter(pl.col("sees").eq(False))["metric"].to_list())


def unseen_metrics(sight: pl.DataFrame, metrics: Iterable[str]) -> frozenset[str]:
    """Of `metrics`, those the positive control does not show to see: blind ones, unjudged ones
    (no random-init values) and ones the control was never measured on. The verdicts leave all
    of them out: an instrument counts only once the control has shown that it can see."""
    seeing = set(sight.filter(pl.col("sees").eq(True))["metric"].to_list())
    return frozenset(m for m in metrics if m not in seeing)
