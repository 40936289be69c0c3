"""The scaling view (the paper's third question): each metric against samples seen, and against
encoder size, across runs.

Samples seen come from the step of each stored evaluation (`eval.every_steps` during training,
or `mtv eval RUN/checkpoints/step-N` afterwards) times the global batch; encoder size is the
trainable parameter count of the run's encoder, counted on the meta device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import polars as pl

from mtv.analysis.synergy import label, task_groups
from mtv.eval import read_results
from mtv.graph import count_parameters
from mtv.specs import load_run_spec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Axis = Literal["samples_seen", "encoder_params"]


def scaling_results(run_dirs: Sequence[str | Path], suite: str = "mini") -> pl.DataFrame:
    """Rows (run, task_set, model, encoder_params, step, samples_seen, metric, value,
    higher_is_better) over every stored evaluation of every run; metric = `evaluator/metric`."""
    frames = []
    for run_dir in map(Path, run_dirs):
        spec = load_run_spec(run_dir)
        encoder = count_parameters(spec)["encoder"]
        frames.append(
            read_results(run_dir, suite, latest=False).select(
                pl.lit(run_dir.name).alias("run"),
                pl.lit(label(task_groups(t.kind for t in spec.tasks))).alias("task_set"),
                pl.lit(spec.model.size).alias("model"),
                pl.lit(encoder).alias("encoder_params"),
                "step",
                "samples_seen",
                (pl.col("evaluator") + "/" + pl.col("metric")).alias("metric"),
                "value",
                "higher_is_better",
            )
        )
    return pl.concat(frames)


def scaling_table(results: pl.DataFrame, axis: Axis) -> pl.DataFrame:
    """One line per series: against samples seen a series is a run (all its evaluations);
    against encoder size it is a task set, each run contributing its latest evaluation.
    Columns: series, x, then one column per metric."""
    if axis == "encoder_params":
        latest = results.filter(pl.col("step") == pl.col("step").max().over("run"))
        frame = latest.select(
            pl.col("task_set").alias("series"), pl.col(axis).alias("x"), "metric", "value"
        )
    else:
        frame = results.select(
            pl.col("run").alias("series"), pl.col(axis).alias("x"), "metric", "value"
        )
    return frame.pivot(
        on="metric", index=["series", "x"], values="value", aggregate_function="mean"
    ).sort("series", "x")


def plot_scaling(
    results: pl.DataFrame, axis: Axis, metrics: Sequence[str] | None = None, columns: int = 3
) -> Figure:
    """One panel per metric (higher-is-better or not said in the title), one line per series,
    x on a log scale."""
    import matplotlib.pyplot as plt

    table = scaling_table(results, axis)
    names = list(metrics or [c for c in table.columns if c not in ("series", "x")])
    better = dict(results.select("metric", "higher_is_better").unique("metric").iter_rows())
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False, layout="constrained"
    )
    for ax, name in zip(axes.flat, names, strict=False):
        for (series,), part in table.group_by("series", maintain_order=True):
            ax.plot(part["x"].to_list(), part[name].to_list(), marker="o", label=str(series))
        ax.set_xscale("log")
        ax.set_title(
            f"{name} ({'higher' if better.get(name, True) else 'lower'} is better)", fontsize=9
        )
        ax.set_xlabel("samples seen" if axis == "samples_seen" else "encoder parameters")
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    return fig
