"""Train the ablation ladder and synergy experiments one after another on this machine and
record each one's wall time and final per-task losses.

    python benchmarks/ladder.py [--only vl vl_ssl ...] [--out benchmarks/results]

Each experiment runs through `mtv run` (the first one renders and labels the mini-world); the
runs land in runs/<name>. Writes ladder.md and ladder.parquet.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from common import ROOT, machine

EXPERIMENTS = [
    "vl",
    "vl_ssl",
    "vl_ground",
    "vl_depth",
    "vl_ssl_ground",
    "vl_ssl_depth",
    "vl_ground_depth",
    "vl_ssl_ground_depth",
]


def spec_batch(name: str) -> int:
    from mtv.specs import load_spec

    return load_spec(ROOT / "experiments" / f"{name}.yaml").data.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=EXPERIMENTS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    args = parser.parse_args()
    rows = []
    for name in args.only:
        run_dir = args.runs / name
        command = [
            sys.executable,
            "-c",
            "from mtv_cli.main import app; app()",
            "run",
            str(ROOT / "experiments" / f"{name}.yaml"),
            "--out",
            str(run_dir),
        ]
        if (run_dir / "checkpoints").is_dir():
            command.append("--resume")
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{name} failed")
        metrics = pl.read_parquet(run_dir / "metrics.parquet")
        last = metrics.filter(~pl.col("skipped")).tail(20)  # mean of the last 20 steps
        row = {"experiment": name, "wall_s": round(seconds, 1), "steps": metrics.height}
        rate = float(metrics["images_per_s"].drop_nulls().median())
        row["images_per_s"] = round(rate, 1)
        # Training time at the median rate: robust to other load on a shared machine.
        row["train_s_at_median_rate"] = round(metrics.height * spec_batch(name) / rate, 1)
        for column in [c for c in metrics.columns if c.startswith("loss")]:
            row[column] = round(float(last[column].mean()), 4)
        rows.append(row)
        print(row, flush=True)
    name = machine()
    table = pl.DataFrame(rows).with_columns(pl.lit(name).alias("machine"))
    args.out.mkdir(parents=True, exist_ok=True)
    table.write_parquet(args.out / "ladder.parquet")
    columns = [c for c in table.columns if c != "machine"]
    lines = [
        "# Ablation ladder and synergy runs on the mini-world\n",
        f"Machine: {name}. Wall time includes start-up (and, for the first run, rendering and "
        "labelling the mini-world); losses are the mean of the last 20 steps.\n",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in table.iter_rows(named=True):
        lines.append(
            "| " + " | ".join("" if row[c] is None else str(row[c]) for c in columns) + " |"
        )
    (args.out / "ladder.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'ladder.md'}")


if __name__ == "__main__":
    main()
