"""A sweep's aggregate made readable: per-experiment summaries over seeds with their reference
points, learning curves, the ladder (Table 3) and synergy (Table 4) with standard errors, paired
comparisons, the verdict on each of the paper's claims, figures, and a Markdown report.

Everything here reads the aggregate (`OUT/results.parquet`, rows of every run's evaluation
history) and the runs' own files; nothing is typed in by hand but the sweep file's description.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from mtv.analysis.curves import experiment_label
from mtv.analysis.synergy import (
    Estimate,
    PerSeed,
    critical_t,
    describe_tasks,
    paired,
)
from mtv.analysis.verdicts import HEADLINE, short_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def final_rows(results: pl.DataFrame) -> pl.DataFrame:
    """Each run's rows at its last evaluated step."""
    last = pl.col("step") == pl.col("step").max().over("run")
    return results.filter(last)


def _chosen(results: pl.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(results["metric"].to_list()))
    wanted = list(metrics or HEADLINE)
    chosen = [m for m in wanted if m in present]
    return chosen or present


def run_summary(final: pl.DataFrame, metrics: Sequence[str]) -> pl.DataFrame:
    """Per experiment, variant and metric: seeds, mean and SE over seeds, and the mean reference
    points (trivial predictor, random-init encoder)."""
    rows = []
    for (experiment, variant, metric), frame in final.filter(
        pl.col("metric").is_in(list(metrics))
    ).group_by("experiment", "variant", "metric", maintain_order=True):
        value = Estimate.of(frame["value"].to_list())
        trivial = frame["trivial"].drop_nulls()
        random_init = frame["random_init"].drop_nulls()
        rows.append(
            {
                "experiment": experiment,
                "variant": variant,
                "tasks": describe_tasks(frame["tasks"][0]),
                "metric": metric,
                "seeds": value.n,
                "mean": value.mean,
                "se": value.se,
                "trivial": float(trivial.mean()) if len(trivial) else None,
                "random_init": float(random_init.mean()) if len(random_init) else None,
                "higher_is_better": bool(frame["higher_is_better"][0]),
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None)


def _stands_above(row: dict[str, Any], reference: float | None, sign: float) -> bool:
    """`row`'s mean better than `reference` (in the direction `sign`) by more than Student's
    t(0.975, seeds - 1) of its standard errors (by any margin with one seed)."""
    if reference is None or row["mean"] is None:
        return False
    if row["se"] is None or math.isnan(row["se"]) or row.get("seeds", 1) < 2:
        return (row["mean"] - reference) * sign > 0
    return (row["mean"] - reference) * sign > critical_t(row["seeds"] - 1) * row["se"]


def instrument_reach(summary: pl.DataFrame) -> pl.DataFrame:
    """Per metric, whether any trained experiment stands out of its noise above the trivial
    predictor and above its random-init encoder (mean of its seeds' untrained weights): where
    none does, the metric's differences between task sets say nothing about what training added.
    Columns: metric, experiment and variant (the best mean), mean, se, seeds, trivial,
    random_init (the best's), beats_trivial, beats_random_init (False when no comparison can be
    made)."""
    rows = []
    for (metric,), frame in summary.group_by("metric", maintain_order=True):
        sign = 1.0 if frame["higher_is_better"][0] else -1.0
        # NaN sorts above every number in polars: a task set whose seeds all failed the metric
        # must not be taken for the best one.
        ranked = frame.with_columns(pl.col("mean").fill_nan(None)).sort(
            pl.col("mean") * sign, descending=True, nulls_last=True
        )
        best, candidates = ranked.row(0, named=True), list(ranked.iter_rows(named=True))
        rows.append(
            {
                "metric": metric,
                "experiment": best["experiment"],
                "variant": best["variant"],
                "mean": best["mean"],
                "se": best["se"],
                "seeds": best["seeds"],
                "trivial": best["trivial"],
                "random_init": best["random_init"],
                # Any task set that stands out counts, not only the best mean: one with a lower
                # mean and a smaller spread can stand out where the best does not.
                "beats_trivial": any(_stands_above(r, r["trivial"], sign) for r in candidates),
                "beats_random_init": any(
                    _stands_above(r, r["random_init"], sign) for r in candidates
                ),
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None)


def experiment_seeds(final: pl.DataFrame, experiment: str) -> PerSeed:
    """One experiment's final values: seed -> metric -> value."""
    frame = final.filter(pl.col("experiment") == experiment)
    return {
        int(seed): dict(zip(f["metric"].to_list(), f["value"].to_list(), strict=True))
        for (seed,), f in frame.group_by("seed")
    }


def comparisons(final: pl.DataFrame, pairs: Sequence[Any], metrics: Sequence[str]) -> pl.DataFrame:
    """Per comparison (a, b, title) and metric: the gain of a over b paired by seed (`gain`:
    positive when a is better; `difference`: a − b in the metric's units)."""
    rows = []
    direction = dict(final.select("metric", "higher_is_better").unique().iter_rows())
    for pair in pairs:
        runs = {}
        for name in (pair.a, pair.b):
            runs[name] = experiment_seeds(final, name)
        for metric in metrics:
            if metric not in direction:
                continue
            gain = paired(runs[pair.a], runs[pair.b], metric, direction[metric])
            rows.append(
                {
                    "comparison": pair.title,
                    "a": pair.a,
                    "b": pair.b,
                    "metric": metric,
                    "gain": gain.mean,
                    # in the metric's own direction, as the ladder shows it
                    "difference": gain.mean if direction[metric] else -gain.mean,
                    "se": gain.se,
                    "seeds": gain.n,
                    "significant": gain.significant,
                }
            )
    return pl.DataFrame(rows, infer_schema_length=None)


# Figures -------------------------------------------------------------------------------------


def plot_learning_curves(results: pl.DataFrame, metrics: Sequence[str]) -> Figure:
    """Each metric against samples seen, one line per experiment (and variant): the mean over
    seeds with a +-SE band; dotted, the trivial predictor."""
    import matplotlib.pyplot as plt

    chosen = [m for m in metrics if m in set(results["metric"])]
    columns = min(4, len(chosen))
    rows = -(-len(chosen) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    names = results.select("experiment", "variant").unique(maintain_order=True).rows()
    for ax, metric in zip(axes.flat, chosen, strict=False):
        frame = results.filter(pl.col("metric") == metric)
        for experiment, variant in names:
            line = (
                frame.filter((pl.col("experiment") == experiment) & (pl.col("variant") == variant))
                .group_by("samples_seen")
                .agg(
                    pl.col("value").mean().alias("mean"),
                    (pl.col("value").std() / pl.col("value").count().sqrt()).alias("se"),
                )
                .sort("samples_seen")
            )
            if not line.height:
                continue
            x = line["samples_seen"].to_numpy() / 1000
            mean = line["mean"].to_numpy()
            se = line["se"].fill_null(0.0).fill_nan(0.0).to_numpy()
            name = experiment_label(experiment, variant)
            ax.plot(x, mean, marker="o", markersize=3, label=name)
            ax.fill_between(x, mean - se, mean + se, alpha=0.2)
        trivial = frame["trivial"].drop_nulls()
        if len(trivial):
            ax.axhline(float(trivial.mean()), color="grey", linestyle=":", label="trivial")
        ax.set_title(short_name(metric), fontsize=9)
        ax.set_xlabel("samples seen (thousands)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_ladder(stats: pl.DataFrame, summary: pl.DataFrame) -> Figure:
    """One panel per metric: the ladder's task sets as bars with +-SE error bars, the
    random-init encoder dashed and the trivial predictor dotted."""
    import matplotlib.pyplot as plt

    steps = stats.filter(pl.col("tasks") != "Absolute gain")
    present = list(dict.fromkeys(steps["metric"].to_list()))
    # the paper's column order, as in the tables
    metrics = [m for m in HEADLINE if m in present] + [m for m in present if m not in HEADLINE]
    columns = min(5, len(metrics))
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.9 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        frame = steps.filter(pl.col("metric") == metric)
        names = frame["tasks"].to_list()
        ax.bar(
            range(len(names)),
            frame["mean"].to_numpy(),
            yerr=frame["se"].fill_nan(0.0).to_numpy(),
            capsize=3,
        )
        ax.set_xticks(
            range(len(names)),
            [n.replace("VL + ", "+").replace(" + ", "\n+") for n in names],
            fontsize=6,
        )
        refs = summary.filter(pl.col("metric") == metric)
        for column, style in (("random_init", "--"), ("trivial", ":")):
            values = refs[column].drop_nulls()
            if len(values):
                ax.axhline(float(values.mean()), color="grey", linestyle=style, linewidth=1)
        ax.set_title(short_name(metric), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(
        "Ablation ladder (mean ± SE over seeds; dashed: random init, dotted: trivial)", fontsize=9
    )
    fig.tight_layout()
    return fig
