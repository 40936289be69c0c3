"""Tables and heatmaps from evaluated run directories (what `mtv synergy` prints and writes)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from mtv.analysis.scaling import plot_scaling, scaling_results, scaling_table
from mtv.analysis.synergy import MissingRuns, ladder_table, synergy_table
from mtv.eval import read_results
from mtv.specs import load_run_spec

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def collect_results(run_dirs: list[Path], suite: str = "mini") -> pl.DataFrame:
    """One frame of (run, seed, tasks, metric, value, higher_is_better) over the runs' latest
    evaluation results; metric names are `evaluator/metric`, `seed` is the run's
    `runtime.seed`."""
    frames = []
    for run_dir in run_dirs:
        spec = load_run_spec(run_dir)
        kinds = [t.kind for t in spec.tasks]
        frame = read_results(run_dir, suite).select(
            pl.lit(str(run_dir)).alias("run"),
            pl.lit(spec.runtime.seed).alias("seed"),
            pl.lit(kinds).alias("tasks"),
            (pl.col("evaluator") + "/" + pl.col("metric")).alias("metric"),
            "value",
            "higher_is_better",
        )
        frames.append(frame)
    return pl.concat(frames)


def plot_synergy(matrix: pl.DataFrame) -> Figure:
    """Synergy (%) per pair (rows) and metric (columns) as a heatmap, with its SE and an n.s.
    mark in each cell when there are seeds; undefined cells say so."""
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(f"{a} x {b}" for a, b in matrix.select("task_a", "task_b").rows()))
    metrics = list(dict.fromkeys(matrix["metric"].to_list()))
    values = np.full((len(pairs), len(metrics)), np.nan)
    text = np.full((len(pairs), len(metrics)), "", dtype=object)
    for row in matrix.iter_rows(named=True):
        r, c = pairs.index(f"{row['task_a']} x {row['task_b']}"), metrics.index(row["metric"])
        value, se = row["synergy"], row.get("synergy_se")
        if value is None or math.isnan(value):
            text[r, c] = "undef."
            continue
        values[r, c] = 100 * value
        text[r, c] = f"{100 * value:.0f}" + (
            "" if se is None or math.isnan(se) else f"\n±{100 * se:.0f}"
        )
        if row.get("significant") is False:
            text[r, c] += "\nn.s."
    fig, ax = plt.subplots(figsize=(1.2 * len(metrics) + 2, 0.8 * len(pairs) + 1.6))
    image = ax.imshow(np.clip(values, -100, 100), cmap="RdBu", vmin=-100, vmax=100, aspect="auto")
    ax.set_xticks(range(len(metrics)), metrics, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(pairs)), pairs, fontsize=8)
    for (r, c), cell in np.ndenumerate(text):
        ax.text(c, r, cell, ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label="synergy (%)")
    ax.set_title("Task synergy (Eq. 4)", fontsize=9)
    fig.tight_layout()
    return fig


def _save(figure: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def heatmap(matrix: pl.DataFrame, path: Path) -> Path:
    """`plot_synergy` written to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, even where one is configured
    return _save(plot_synergy(matrix), path)


def synergy_report(
    run_dirs: list[Path], suite: str, out: Path, metrics: list[str] | None = None
) -> tuple[pl.DataFrame | None, pl.DataFrame, list[Path]]:
    """(ladder table or None when the ladder's runs are not all there, synergy table, files),
    over every seed the runs have (`metrics`: only these `evaluator/metric`s)."""
    results = collect_results(run_dirs, suite)
    if metrics:
        unknown = sorted(set(metrics) - set(results["metric"]))
        if unknown:
            raise ValueError(f"--metric: the runs have no results for {unknown}")
        results = results.filter(pl.col("metric").is_in(metrics))
    matrix = synergy_table(results)
    try:
        ladder: pl.DataFrame | None = ladder_table(results)
    except MissingRuns:
        ladder = None
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "synergy.parquet"]
    matrix.write_parquet(files[0])
    if ladder is not None:
        files.append(out / "ladder.parquet")
        ladder.write_parquet(files[-1])
    files.append(heatmap(matrix, out / "synergy.png"))
    return ladder, matrix, files


def scaling_report(
    run_dirs: list[Path], suite: str, out: Path
) -> tuple[dict[str, pl.DataFrame], list[Path]]:
    """The scaling tables (against samples seen, against encoder size), written as Parquet,
    with one PNG of panels per axis."""
    import matplotlib

    matplotlib.use("Agg")
    results = scaling_results(run_dirs, suite)
    out.mkdir(parents=True, exist_ok=True)
    tables, files = {}, []
    for axis in ("samples_seen", "encoder_params"):
        tables[axis] = scaling_table(results, axis)
        files.append(out / f"scaling_{axis}.parquet")
        tables[axis].write_parquet(files[-1])
        files.append(_save(plot_scaling(results, axis), out / f"scaling_{axis}.png"))
    return tables, files
