"""Training curves of a set of runs: every logged loss per task, side by side across runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def run_name(run_dir: Path) -> str:
    return run_dir.name


def experiment_label(experiment: str, variant: str | None = None) -> str:
    """A sweep's experiment at one grid point as reports name it: `vl (optim.lr=0.001)`."""
    return str(experiment) + (f" ({variant})" if variant else "")


def load_curves(run_dirs: Sequence[str | Path], prefix: str = "loss") -> pl.DataFrame:
    """Long frame (run, step, name, value) of the metrics whose name starts with `prefix` (the
    total `loss` and every `loss/<task>`), skipped steps left out."""
    frames = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "metrics.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir} has no metrics.parquet (is it a run directory?)")
        metrics = pl.read_parquet(path)
        if "skipped" in metrics.columns:
            metrics = metrics.filter(~pl.col("skipped"))
        names = [c for c in metrics.columns if c == prefix or c.startswith(prefix + "/")]
        frames.append(
            metrics.select("step", *names)
            .unpivot(index="step", variable_name="name", value_name="value")
            .drop_nulls("value")
            .with_columns(pl.lit(run_name(run_dir)).alias("run"))
            .select("run", "step", "name", "value")
        )
    return pl.concat(frames)


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard-style smoothing, but the
    first points are not pulled towards zero)."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i) if weight > 0 else value)
    return out


def plot_curves(curves: pl.DataFrame, smoothing: float = 0.8, columns: int = 3) -> Figure:
    """One panel per loss (total first, then per task), one line per run."""
    import matplotlib.pyplot as plt

    names = sorted(curves["name"].unique().to_list(), key=lambda n: (n != "loss", n))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False, layout="constrained"
    )
    runs = curves["run"].unique(maintain_order=True).to_list()
    colours = plt.get_cmap("tab10")
    for ax, name in zip(axes.flat, names, strict=False):
        for index, run in enumerate(runs):
            part = curves.filter((pl.col("run") == run) & (pl.col("name") == name)).sort("step")
            if part.is_empty():
                continue
            values = smooth(part["value"].to_list(), smoothing)
            ax.plot(part["step"].to_list(), values, label=run, color=colours(index % 10))
        ax.set_title(name)
        ax.set_xlabel("step")
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(runs), 4), fontsize=8)
    return fig
