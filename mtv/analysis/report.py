"""Tables and heatmaps from evaluated run directories (what `mtv synergy` prints and writes)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from mtv.analysis.scaling import plot_scaling, scaling_results, scaling_table
from mtv.analysis.synergy import MissingRuns, ladder_table, synergy_table, synergy_wide
from mtv.eval import read_results
from mtv.specs import load_spec

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def collect_results(run_dirs: list[Path], suite: str = "mini") -> pl.DataFrame:
    """One frame of (run, tasks, metric, value, higher_is_better) over the runs' latest
    evaluation results; metric names are `evaluator/metric`."""
    frames = []
    for run_dir in run_dirs:
        kinds = [t.kind for t in load_spec(run_dir / "spec.yaml").tasks]
        frame = read_results(run_dir, suite).select(
            pl.lit(str(run_dir)).alias("run"),
            pl.lit(kinds).alias("tasks"),
            (pl.col("evaluator") + "/" + pl.col("metric")).alias("metric"),
            "value",
            "higher_is_better",
        )
        frames.append(frame)
    return pl.concat(frames)


def plot_synergy(matrix: pl.DataFrame) -> Figure:
    """Synergy per pair (rows) and metric (columns), in percent, as a heatmap figure."""
    import matplotlib.pyplot as plt

    wide = synergy_wide(matrix)
    metrics = [c for c in wide.columns if c != "pair"]
    values = wide.select(metrics).to_numpy() * 100
    fig, ax = plt.subplots(figsize=(1.1 * len(metrics) + 2, 0.6 * len(wide) + 1.5))
    image = ax.imshow(values, cmap="RdBu", vmin=-100, vmax=100, aspect="auto")
    ax.set_xticks(range(len(metrics)), metrics, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(wide)), wide["pair"].to_list())
    for (r, c), value in np.ndenumerate(values):
        ax.text(
            c, r, "-" if value != value else f"{value:.0f}", ha="center", va="center", fontsize=7
        )
    fig.colorbar(image, ax=ax, label="synergy (%)")
    ax.set_title("Task synergy (Eq. 4)")
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
    run_dirs: list[Path], suite: str, out: Path
) -> tuple[pl.DataFrame | None, pl.DataFrame, list[Path]]:
    """(ladder table or None when the ladder's runs are not all there, synergy table, files)."""
    results = collect_results(run_dirs, suite)
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
