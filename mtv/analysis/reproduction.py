"""What `mtv sweep` writes after its runs: the analysis files in the sweep's folder and, when the
sweep file names one, a Markdown report with its figures and table beside it
(`benchmarks/results/reproduction.md` for the committed reproduction)."""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import polars as pl

from mtv.analysis.controls import instrument_sight, unseen_metrics
from mtv.analysis.gradients import gradient_synergy
from mtv.analysis.loss_weighting import WEIGHTING_RULES, weighting_verdict
from mtv.analysis.report import _save, plot_synergy
from mtv.analysis.resolution import resolution, resolution_section
from mtv.analysis.sections import (
    UNSHARED_RATE_QUANTILE,
    baseline_section,
    gradient_section,
    instrument_section,
    md_table,
    runs_section,
    stall_section,
)
from mtv.analysis.sweep_report import (
    _chosen,
    comparisons,
    final_rows,
    plot_ladder,
    plot_learning_curves,
    run_summary,
)
from mtv.analysis.synergy import (
    UNTESTED_EQUAL,
    Estimate,
    MissingRuns,
    critical_t,
    ladder_stats,
    ladder_table,
    synergy_table,
    synergy_wide,
    task_groups,
)
from mtv.analysis.training import plot_vl_losses, vl_stalls
from mtv.analysis.verdicts import (
    PAPER_COLUMNS,
    PAPER_LADDER_B16_10M,
    PAPER_SYNERGY_B16_10M,
    VERDICT_RULES,
    Verdict,
    short_name,
    synergy_metrics,
    verdicts,
)
from mtv.specs import load_run_spec

if TYPE_CHECKING:
    from mtv.specs.sweep import SweepSpec


def _table_runs(final: pl.DataFrame, tables: list[str] | None) -> pl.DataFrame | None:
    """The runs of the ladder and synergy tables: the named experiments, else all when the task
    sets of their experiments and grid points are distinct; None when neither applies."""
    if tables is not None:
        return final.filter(pl.col("experiment").is_in(tables))
    # Grid points (variants) of one experiment share its task set: one run per task set and
    # seed is what the tables need.
    sets = final.select("experiment", "variant", "tasks").unique(["experiment", "variant"])
    groups = [task_groups(t) for t in sets["tasks"].to_list()]
    return final if len(set(groups)) == len(groups) else None


def _threads_note(final: pl.DataFrame) -> str:
    """How many CPU threads the runs trained with (each run's `environment.json`): jobs of a
    parallel sweep had fewer each, side by side, and took longer each than one job alone."""
    threads: dict[str, int] = {}
    for run in final["run"].unique().to_list():
        path = Path(run) / "environment.json"
        found = json.loads(path.read_text()).get("cpu_threads") if path.is_file() else None
        key = "an unrecorded number of" if found is None else str(found)
        threads[key] = threads.get(key, 0) + 1
    if len(threads) < 2:
        return ""
    counts = "; ".join(f"{n} run(s) with {k} CPU thread(s)" for k, n in sorted(threads.items()))
    return (
        f" Not all runs trained alike: {counts}. Jobs that a parallel sweep ran side by side "
        "had fewer threads each and shared the CPU, so their minutes are not comparable with "
        "those of a job alone."
    )


def _aggregate_table(pilot: str) -> Path:
    """A pilot entry's aggregate: a sweep's `out` folder holds it as `results.parquet`; a
    `.parquet` file is one itself (a committed report's table, its runs elsewhere)."""
    path = Path(pilot)
    return path if path.suffix == ".parquet" else path / "results.parquet"


def _training_minutes(final: pl.DataFrame) -> dict[tuple[str, str], float]:
    """Mean training minutes per experiment and grid point, at each run's unshared step rate
    (`UNSHARED_RATE_QUANTILE`); of the runs whose metrics are on this machine (a pilot read from
    a committed table may have none: its minutes are in its own report)."""
    minutes: dict[tuple[str, str], list[float]] = {}
    for (experiment, variant, run), _ in final.group_by("experiment", "variant", "run"):
        if not (Path(run) / "metrics.parquet").is_file():
            continue
        metrics = pl.read_parquet(Path(run) / "metrics.parquet")
        batch = load_run_spec(run).data.batch_size
        rate = float(metrics["images_per_s"].drop_nulls().quantile(UNSHARED_RATE_QUANTILE))
        minutes.setdefault((str(experiment), str(variant)), []).append(
            metrics.height * batch / rate / 60
        )
    return {k: sum(v) / len(v) for k, v in minutes.items()}


def _machine(final: pl.DataFrame) -> str:
    run = Path(final["run"][0])
    env = (
        json.loads((run / "environment.json").read_text())
        if (run / "environment.json").is_file()
        else {}
    )
    torch = env.get("packages", {}).get("torch", "?")
    precision = env.get("precision", {}).get("resolved")
    return (
        f"{env.get('host', platform.node())}: {env.get('device_name', '?')} "
        f"({env.get('device', '?')}), "
        f"world size {env.get('world_size', 1)}, torch {torch}"
        + (f", precision {precision}" if precision else "")
    )


def _task_sets(summary: pl.DataFrame, spec: SweepSpec) -> pl.DataFrame:
    """The rows of the task sets the claims compare: the experiments of the tables when the
    sweep names them, else every experiment but the positive controls (trained for what the
    instruments ask, they would stand in for "the best task set")."""
    if spec.analysis.tables is not None:
        return summary.filter(pl.col("experiment").is_in(spec.analysis.tables))
    controls = [c for c in (spec.analysis.control, *spec.analysis.extra_controls) if c]
    return summary.filter(~pl.col("experiment").is_in(controls))


def _paper_ladder_rows(metrics: list[str], steps: list[str]) -> list[list[str]]:
    rows = []
    for step in steps:
        paper = PAPER_LADDER_B16_10M.get(step)
        if paper is None:
            continue
        cells = []
        for metric in metrics:
            column = PAPER_COLUMNS.get(metric)
            cells.append("–" if column is None or column not in paper else f"({paper[column]:+g})")
        rows.append([f"*paper B/16 10M: {step}*", *cells])
    return rows


def _ladder_section(runs: pl.DataFrame, metrics: list[str]) -> list[str]:
    table = ladder_table(runs.filter(pl.col("metric").is_in(metrics)))
    columns = [m for m in metrics if m in table.columns]
    rows = [[r["tasks"], *(r.get(c) or "–" for c in columns)] for r in table.iter_rows(named=True)]
    steps = [r["tasks"] for r in table.iter_rows(named=True)]
    header = ["tasks", *map(short_name, columns)]
    return md_table(header, rows + _paper_ladder_rows(columns, steps))


def _synergy_section(matrix: pl.DataFrame, metrics: list[str]) -> list[str]:
    wide = synergy_wide(matrix)
    columns = [m for m in [*metrics, "average"] if m in wide.columns]
    rows = [[r["pair"], *(_cell(r.get(c)) for c in columns)] for r in wide.iter_rows(named=True)]
    for pair, paper in PAPER_SYNERGY_B16_10M.items():
        cells = []
        for metric in columns:
            column = "average" if metric == "average" else PAPER_COLUMNS.get(metric)
            cells.append(
                "–" if column is None or column not in paper else f"{paper[column] / 100:+.2f}"
            )
        rows.append([f"*paper B/16 10M: {pair}*", *cells])
    return md_table(["pair", *map(short_name, columns)], rows)


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "undefined" if math.isnan(value) else f"{value:+.2f}"
    return str(value)


def _verdict_section(found: list[Verdict]) -> list[str]:
    return md_table(
        ["claim (paper)", "verdict", "corrected (Holm)", "evidence"],
        [[v.claim, f"**{v.verdict}**", v.corrected or "–", v.evidence] for v in found],
    )


def _comparison_section(frame: pl.DataFrame) -> list[str]:
    lines = []
    for (title,), rows in frame.group_by("comparison", maintain_order=True):
        a, b = rows["a"][0], rows["b"][0]
        lines.append(f"**{title}** ({a} − {b}, differences paired by seed):\n")
        cells = [
            Estimate(r["difference"], r["se"], r["seeds"]).text(signed=True)
            for r in rows.iter_rows(named=True)
        ]
        lines += md_table([short_name(m) for m in rows["metric"]], [cells])
        lines.append("")
    return lines


def _paper_synergy(runs: pl.DataFrame, blind: frozenset[str] = frozenset()) -> pl.DataFrame:
    """The synergy table with the average over the counterparts of the paper's columns (one
    metric per column, none of them blind)."""
    measured = set(runs["metric"].unique().to_list())
    return synergy_table(runs, average_over=synergy_metrics(measured, blind))


def _table_file(
    make: Callable[[pl.DataFrame], pl.DataFrame],
    runs: pl.DataFrame,
    path: Path,
    written: list[Path],
) -> pl.DataFrame | None:
    """`make(runs)` written to `path`; None when the runs lack a task set it needs."""
    try:
        table = make(runs)
    except MissingRuns:
        return None
    table.write_parquet(path)
    written.append(path)
    return table


def write_sweep_analysis(results: pl.DataFrame, spec: SweepSpec, out: Path) -> list[Path]:
    """The analysis of a finished sweep: OUT/summary.parquet (per experiment over seeds), the
    ladder and synergy tables when the task sets form them, comparisons, figures; and the
    Markdown report when the sweep names one. Returns the files written."""
    matplotlib.use("Agg")
    final = final_rows(results)
    metrics = _chosen(final, spec.analysis.metrics)
    written = []
    summary = run_summary(final, metrics)
    summary.write_parquet(out / "summary.parquet")
    written.append(out / "summary.parquet")
    control = spec.analysis.control
    sight = instrument_sight(final, control) if control else None
    if sight is not None:
        sight.write_parquet(out / "instruments.parquet")
        written.append(out / "instruments.parquet")
    # What the control does not show to see (blind, unjudged or unmeasured) stays out of the
    # verdicts; without a control in the sweep nothing is judged and everything counts.
    blind = unseen_metrics(sight, metrics) if sight is not None else frozenset()
    runs = _table_runs(final, spec.analysis.tables)
    stalls = vl_stalls(final)  # the report's section and the weighting evidence read them
    ladder = matrix = None
    found: list[Verdict] = []
    if runs is not None:
        chosen = runs.filter(pl.col("metric").is_in(metrics))
        ladder = _table_file(ladder_stats, chosen, out / "ladder.parquet", written)
        matrix = _table_file(
            lambda r: _paper_synergy(r, blind), chosen, out / "synergy.parquet", written
        )
        # A sweep that names its tables, or forms one, is about the claims: each claim whose
        # runs are missing says which, rather than dropping out of the report.
        if spec.analysis.tables is not None or ladder is not None or matrix is not None:
            found = verdicts(runs, tuple(metrics), blind)
    resolved = (
        _table_file(lambda r: resolution(r, metrics), runs, out / "resolution.parquet", written)
        if runs is not None
        else None
    )
    claim = spec.analysis.weighting
    if claim is not None:
        found.append(
            weighting_verdict(final, claim.uniform, claim.alternatives, blind, stalls, metrics)
        )
    gradients = gradient_synergy(runs, matrix) if runs is not None and matrix is not None else None
    if gradients is not None and gradients.height:
        gradients.write_parquet(out / "gradient_synergy.parquet")
        written.append(out / "gradient_synergy.parquet")
    compared = (
        comparisons(final, spec.analysis.comparisons, metrics)
        if spec.analysis.comparisons
        else None
    )
    if spec.report is None:
        return written
    report = Path(spec.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    stem = report.with_suffix("")
    figures: dict[str, Path] = {}
    histories = results.group_by("run").agg(pl.col("step").n_unique()).get_column("step").max()
    if histories is not None and histories > 1:
        figures["curves"] = _save(
            plot_learning_curves(results, metrics), Path(f"{stem}_curves.png")
        )
    pilots = [_aggregate_table(p) for p in spec.analysis.pilot]
    found_pilots = [pl.read_parquet(p) for p in pilots if p.is_file()]
    pilot = pl.concat(found_pilots, how="diagonal_relaxed") if found_pilots else None
    if pilot is not None:
        figures["pilot"] = _save(
            plot_learning_curves(pilot, metrics), Path(f"{stem}_pilot_curves.png")
        )
    if stalls.height:
        stalls.write_parquet(out / "stalls.parquet")
        written.append(out / "stalls.parquet")
        figures["vl_loss"] = _save(plot_vl_losses(final), Path(f"{stem}_vl_loss.png"))
    if ladder is not None:
        figures["ladder"] = _save(
            plot_ladder(ladder, _task_sets(summary, spec)), Path(f"{stem}_ladder.png")
        )
    if matrix is not None:
        figures["synergy"] = _save(plot_synergy(matrix), Path(f"{stem}_synergy.png"))
    results.write_parquet(stem.with_suffix(".parquet"))
    written += [*figures.values(), stem.with_suffix(".parquet")]
    missing = [
        name for name, path in zip(spec.analysis.pilot, pilots, strict=True) if not path.is_file()
    ]
    text = _markdown(
        spec,
        final,
        summary,
        metrics,
        runs,
        found,
        compared,
        figures,
        pilot,
        missing,
        report,
        sight,
        gradients,
        stalls,
        resolved,
    )
    report.write_text(text)
    written.append(report)
    return written


def _markdown(
    spec: SweepSpec,
    final: pl.DataFrame,
    summary: pl.DataFrame,
    metrics: list[str],
    runs: pl.DataFrame | None,
    found: list[Verdict],
    compared: pl.DataFrame | None,
    figures: dict[str, Path],
    pilot: pl.DataFrame | None,
    missing_pilots: list[str],
    report: Path,
    sight: pl.DataFrame | None = None,
    gradients: pl.DataFrame | None = None,
    stalls: pl.DataFrame | None = None,
    resolved: pl.DataFrame | None = None,
) -> str:
    blind = unseen_metrics(sight, metrics) if sight is not None else frozenset()
    seeds = sorted(final["seed"].unique().to_list())
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    lines = [
        f"# {spec.name}\n",
        f"{spec.description.strip()}\n" if spec.description else "",
        f"Made by `mtv sweep` on {date}. Machine: {_machine(final)}. "
        f"Seeds: {', '.join(map(str, seeds))} (each sets `runtime.seed` and `data.loader.seed`: "
        "runs of one seed share initial weights and data order). "
        f"Evaluation: suite `{spec.eval.suite}`, {spec.eval.scenes} held-out scenes. "
        "Every number is mean ± standard error over seeds; differences between task sets are "
        "paired by seed and marked *n.s.* unless a two-sided Student's t-test with the seeds' "
        "degrees of freedom rejects zero at p < 0.05; a difference equal at every seed is "
        f"marked *{UNTESTED_EQUAL}* and not counted, as metrics counted over a few hundred "
        "scenes are rounded and equal values at a few seeds are a coincidence, not certainty"
        + (
            f" ({critical_t(len(seeds) - 1):.2f} standard errors with {len(seeds)} seeds).\n"
            if len(seeds) > 1
            else "; with one seed there is no standard error and nothing is tested.\n"
        ),
    ]
    if found:
        rules = VERDICT_RULES + (" " + WEIGHTING_RULES if spec.analysis.weighting else "")
        lines += ["## Verdicts\n", *_verdict_section(found), "", rules + "\n"]
    if resolved is not None and runs is not None:
        lines += resolution_section(resolved, runs, blind)
    lines += baseline_section(summary)
    lines += [
        "## Runs (final step)\n",
        *runs_section(
            summary,
            metrics,
            _training_minutes(final),
            _threads_note(final),
            spec.analysis.extra_controls,
        ),
        "",
        *instrument_section(
            _task_sets(summary, spec),
            sight,
            spec.analysis.control,
            {name: instrument_sight(final, name) for name in spec.analysis.extra_controls},
        ),
    ]
    if stalls is not None:
        figure = figures.get("vl_loss")
        lines += stall_section(stalls, figure.name if figure else None)
    if "curves" in figures:
        lines += ["## Learning curves\n", f"![learning curves]({figures['curves'].name})\n"]
    if pilot is not None:
        lines += [
            "## Pilot\n",
            f"The pilot sweeps ({', '.join(spec.analysis.pilot)}): their runs and learning "
            "curves (one seed each).\n",
        ]
        pilot_final = final_rows(pilot)
        pilot_summary = run_summary(pilot_final, metrics)
        pilot_minutes = _training_minutes(pilot_final)
        lines += [
            *runs_section(pilot_summary, metrics, pilot_minutes, _threads_note(pilot_final)),
            "",
        ]
        lines.append(f"![pilot learning curves]({figures['pilot'].name})\n")
    if missing_pilots:
        # Said, not left out: a reader must know the report lacks them.
        lines += [
            "## Pilot\n" if pilot is None else "",
            "Not in this report yet (no aggregate table, `results.parquet`): "
            + ", ".join(f"`{name}`" for name in missing_pilots)
            + ". Run their sweeps (`experiments/sweeps/`), then this sweep again to rewrite the "
            "report with them.\n",
        ]
    if runs is not None:
        try:
            lines += ["## Ablation ladder (Table 3 layout)\n", *_ladder_section(runs, metrics), ""]
            if "ladder" in figures:
                lines.append(f"![ladder]({figures['ladder'].name})\n")
        except MissingRuns as err:
            lines.append(f"(no ladder: {err})\n")
        try:
            matrix = _paper_synergy(runs.filter(pl.col("metric").is_in(metrics)), blind)
            lines += [
                "## Task synergy (Table 4 layout, Eq. 4)\n",
                "Synergy is defined only where the better single task's gain over VL stands out "
                "of its noise; *n.s.* marks an excess dAB − max(dA, dB) that is not significant "
                "(t-test, p < 0.05); the ± of a synergy is that excess's SE divided by the better "
                "single task's mean gain, whose own noise it leaves out, so the test, not the "
                "±, says what stands out. "
                "The average is over the counterparts of the paper's Table 4 columns, one metric "
                "per column (the first of its metrics that can see), where synergy is defined; "
                "it says over how many.\n",
                *(
                    []
                    if (matrix["seeds"].max() or 0) >= 2
                    else [
                        "With one seed nothing is tested yet: a synergy is shown wherever the "
                        "better single task gained at all, however little, and no cell is "
                        "marked.\n"
                    ]
                ),
                *_synergy_section(matrix, metrics),
                "",
            ]
            if "synergy" in figures:
                lines.append(f"![synergy]({figures['synergy'].name})\n")
        except MissingRuns as err:
            lines.append(f"(no synergy table: {err})\n")
    if gradients is not None:
        lines += gradient_section(gradients)
    if compared is not None and compared.height:
        lines += ["## Comparisons\n", *_comparison_section(compared)]
    lines += [
        f"Aggregate of every run's evaluation history: `{report.with_suffix('.parquet').name}` "
        f"(and `{spec.out}/results.parquet`); per-experiment summary: "
        f"`{spec.out}/summary.parquet`.\n"
    ]
    return "\n".join(line for line in lines if line is not None) + "\n"
