"""Tables and heatmaps from evaluated run directories (what `mtv synergy` prints and writes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from mtv.analysis.synergy import MissingRuns, ladder_table, synergy_table
from mtv.specs import load_spec


def collect_results(run_dirs: list[Path], suite: str = "mini") -> pl.DataFrame:
    """One frame of (run, tasks, metric, value, higher_is_better) over the runs' eval results;
    metric names are `evaluator/metric`."""
    frames = []
    for run_dir in run_dirs:
        path = run_dir / "eval" / f"{suite}.parquet"
        if not path.is_file():
            raise FileNotFoundError(
                f"{run_dir} has no {suite} results: run `mtv eval {run_dir}` first"
            )
        kinds = [t.kind for t in load_spec(run_dir / "spec.yaml").tasks]
        frame = pl.read_parquet(path).select(
            pl.lit(str(run_dir)).alias("run"),
            pl.lit(kinds).alias("tasks"),
            (pl.col("evaluator") + "/" + pl.col("metric")).alias("metric"),
            "value",
            "higher_is_better",
        )
        frames.append(frame)
    return pl.concat(frames)


def heatmap(matrix: pl.DataFrame, path: Path) -> Path:
    """Synergy per pair (rows) and metric (columns) as a PNG heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wide = matrix.with_columns((pl.col("task_a") + " x " + pl.col("task_b")).alias("pair")).pivot(
        on="metric", index="pair", values="synergy"
    )
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
