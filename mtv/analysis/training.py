"""What a sweep's training histories show beside its scores: the VL loss of every run against
the loss of logits that ignore the image, and the stretches where a run sat there (a *stall*).

A SigLIP model that ignores its inputs gives every (image, caption) pair one logit c; with one
positive among N captions its loss per image, -(log σ(c) + (N - 1) log σ(-c)), is smallest at
σ(c) = 1/N:

    L0 = log N + (N - 1) log(N / (N - 1))        (5.151 for N = 64)

A run whose VL loss sits at L0 has learnt nothing yet that ties images to captions. Sitting
there for a long stretch is an event of the optimisation (the step size, the other tasks'
gradients at the start), not what a task set can learn: a difference between task sets that one
stalled seed drives belongs to that seed, and the report names such runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from mtv.analysis.curves import experiment_label, smooth
from mtv.specs import load_run_spec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STALL_TOLERANCE = 0.01  # relative distance from L0 that counts as sitting at it
STALL_FRACTION = 0.05  # of a run's logged steps, at L0 in one stretch, that make a stall
STALL_GAP = 0.02  # of a run's logged steps: the longest excursion a stretch bridges


def constant_siglip_loss(captions: int) -> float:
    """L0: the SigLIP loss per image of the best constant logit, one positive in `captions`."""
    if captions < 2:
        raise ValueError(f"a SigLIP batch needs at least 2 captions, not {captions}")
    return math.log(captions) + (captions - 1) * math.log(captions / (captions - 1))


def _vl_history(run: Path) -> pl.DataFrame | None:
    path = run / "metrics.parquet"
    if not path.is_file():
        return None
    metrics = pl.read_parquet(path)
    if "loss/vl" not in metrics.columns:
        return None
    return metrics.select("step", "loss/vl").drop_nulls().sort("step")


def longest_stretch_at(
    steps: list[int], losses: list[float], level: float, gap: int = 0
) -> tuple[int, int, int]:
    """(first step, last step, count at `level`) of the longest stretch of logged steps whose loss
    lies within STALL_TOLERANCE of `level`, bridging excursions of up to `gap` logged steps (a
    spike off a plateau that falls back is not its end); (0, 0, 0) when no step is at `level`."""
    best = (0, 0, 0)
    start = last = count = 0
    away = gap + 1  # steps since the last one at `level`: none yet
    for index, loss in enumerate(losses):
        if abs(loss - level) > STALL_TOLERANCE * level:
            away += 1
            continue
        if away > gap:
            start, count = index, 0
        away, last, count = 0, index, count + 1
        if count > best[2]:
            best = (steps[start], steps[last], count)
    return best


def vl_stalls(final: pl.DataFrame) -> pl.DataFrame:
    """Per run of `final` (rows with experiment, variant when a sweep has grid points, seed,
    run) that trains VL: its L0, and its longest stretch at L0 (first, last, steps at L0;
    excursions up to STALL_GAP of the run bridged) out of its logged steps; `stalled` when it
    holds at least STALL_FRACTION of them."""
    rows = []
    final = final if "variant" in final.columns else final.with_columns(variant=pl.lit(""))
    for (experiment, variant, seed, run), _ in final.group_by(
        "experiment", "variant", "seed", "run", maintain_order=True
    ):
        history = _vl_history(Path(run))
        if history is None or not history.height:
            continue
        level = constant_siglip_loss(load_run_spec(run).data.batch_size)
        first, last, count = longest_stretch_at(
            history["step"].to_list(),
            history["loss/vl"].to_list(),
            level,
            gap=round(STALL_GAP * history.height),
        )
        rows.append(
            {
                "experiment": experiment,
                "variant": variant or "",
                "seed": int(seed),
                "run": str(run),
                "l0": level,
                "first": first,
                "last": last,
                "steps": count,
                "logged": history.height,
                "stalled": count >= STALL_FRACTION * history.height,
            }
        )
    schema = {
        "experiment": pl.String,
        "variant": pl.String,
        "seed": pl.Int64,
        "run": pl.String,
        "l0": pl.Float64,
        "first": pl.Int64,
        "last": pl.Int64,
        "steps": pl.Int64,
        "logged": pl.Int64,
        "stalled": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema)


def plot_vl_losses(final: pl.DataFrame, smoothing: float = 0.9, columns: int = 4) -> Figure:
    """One panel per experiment (and grid point): the smoothed VL loss of each seed, L0
    dotted."""
    import matplotlib.pyplot as plt

    final = final if "variant" in final.columns else final.with_columns(variant=pl.lit(""))
    histories: dict[str, list[tuple[int, str, pl.DataFrame]]] = {}
    for experiment, variant, seed, run in (
        final.select("experiment", "variant", "seed", "run").unique(maintain_order=True).iter_rows()
    ):
        history = _vl_history(Path(run))
        if history is not None:
            panel = experiment_label(experiment, variant)
            histories.setdefault(panel, []).append((seed, run, history))
    experiments = list(histories)
    columns = max(1, min(columns, len(experiments)))
    rows = max(1, -(-len(experiments) // columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False, sharey=True
    )
    for ax, experiment in zip(axes.flat, experiments, strict=False):
        for seed, _, history in histories[experiment]:
            values = smooth(history["loss/vl"].to_list(), smoothing)
            ax.plot(history["step"].to_list(), values, linewidth=1, label=f"seed {seed}")
        run = histories[experiment][0][1]
        level = constant_siglip_loss(load_run_spec(run).data.batch_size)
        ax.axhline(level, color="grey", linestyle=":", linewidth=1)
        ax.set_title(experiment, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(experiments) :]:
        ax.axis("off")
    fig.suptitle("VL loss per run (dotted: L0, logits that ignore the image)", fontsize=9)
    fig.tight_layout()
    return fig
