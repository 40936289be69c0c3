"""How much of a probe's score is the probe? The mini suite's trained probes (the linear depth,
DPT depth, segmentation, pooled and object-centric probes) measured on one run's frozen encoder
and on its random init, each several times with another draw of the probe (its initial weights
and minibatches, `probe_seed_offset`), on the same held-out scenes. An instrument resolves the
run from its random init when the gap between them is larger than the probes' own spread:

    python benchmarks/probe_noise.py RUN [--scenes 500] [--draws 3] [--out benchmarks/results]

Writes probe_noise.md and probe_noise.parquet.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import polars as pl

from mtv.eval import FrozenModel, load_data, measure
from mtv.eval.probes import probe_seed_offset
from mtv.runs.checkpoint import CheckpointError
from mtv.specs import EvalSpec

from common import machine

PROBES = ("depth_probe", "depth_dpt_probe", "segmentation", "pooled_probe", "object_shape")


def draws(model: FrozenModel, settings: EvalSpec, data: object, n: int) -> pl.DataFrame:
    """Rows (draw, evaluator, metric, value, higher_is_better) of `n` draws of the probes."""
    frames = []
    for draw in range(n):
        with probe_seed_offset(draw):
            rows = measure(model, settings, data)
        frames.append(rows.with_columns(pl.lit(draw).alias("draw")))
    return pl.concat(frames)


def table(trained: pl.DataFrame, untrained: pl.DataFrame) -> pl.DataFrame:
    """Per metric: mean and spread (SD over draws) of the run and of its random init, the gap
    in the metric's own direction, and whether the gap exceeds twice the larger spread."""
    rows = []
    for (evaluator, metric), part in trained.group_by("evaluator", "metric", maintain_order=True):
        other = untrained.filter((pl.col("evaluator") == evaluator) & (pl.col("metric") == metric))
        a, b = part["value"].to_list(), other["value"].to_list()
        sign = 1.0 if part["higher_is_better"][0] else -1.0
        spread = max(statistics.stdev(a), statistics.stdev(b)) if len(a) > 1 else float("nan")
        gap = sign * (statistics.mean(a) - statistics.mean(b))
        rows.append(
            {
                "metric": f"{evaluator}/{metric}",
                "run_mean": statistics.mean(a),
                "run_sd": statistics.stdev(a) if len(a) > 1 else float("nan"),
                "random_mean": statistics.mean(b),
                "random_sd": statistics.stdev(b) if len(b) > 1 else float("nan"),
                "gap": gap,
                "resolves": bool(gap > 2 * spread),
            }
        )
    return pl.DataFrame(rows)


def markdown(frame: pl.DataFrame, run: Path, scenes: int, n: int) -> str:
    lines = [
        "# How much of a probe's score is the probe?\n",
        f"Machine: {machine()}, fp32. Run: `{run}` (its latest checkpoint) against its random "
        f"init, {scenes} held-out scenes of the `mini` suite, {n} draws of each probe (initial "
        "weights and minibatches). Gap: run minus random init in the metric's own direction; "
        "*resolves*: the gap is more than twice the larger SD over draws. Command: `python "
        f"benchmarks/probe_noise.py {run} --scenes {scenes} --draws {n}`.\n",
        "| metric | run (mean ± SD) | random init (mean ± SD) | gap | resolves |",
        "|---|---:|---:|---:|---|",
    ]
    for r in frame.iter_rows(named=True):
        lines.append(
            f"| {r['metric']} | {r['run_mean']:.3f} ± {r['run_sd']:.3f} "
            f"| {r['random_mean']:.3f} ± {r['random_sd']:.3f} | {r['gap']:+.3f} "
            f"| {'yes' if r['resolves'] else '**no**'} |"
        )
    lines.append(
        "\nAn SD of 0 is a metric without a trained probe (`object_shape`'s zero-shot top-1 "
        "scores): it is deterministic, and its gap is judged by the seeds of a sweep, not here.\n"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory or one of its checkpoints")
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.draws < 2:
        parser.error("--draws must be at least 2: one draw has no spread")
    try:
        model = FrozenModel.from_run(args.run)
    except (FileNotFoundError, CheckpointError) as err:  # no run there, or none readable
        parser.error(str(err))
    settings = EvalSpec(suite="mini", scenes=args.scenes, only=list(PROBES))
    data = load_data(settings, model)
    trained = draws(model, settings, data, args.draws)
    untrained = draws(model.random_init(), settings, data, args.draws)
    frame = table(trained, untrained)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.with_columns(
        pl.lit(machine()).alias("machine"), pl.lit(str(args.run)).alias("run")
    ).write_parquet(args.out / "probe_noise.parquet")
    text = markdown(frame, args.run, args.scenes, args.draws)
    (args.out / "probe_noise.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
