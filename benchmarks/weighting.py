"""What `optim.weighting` costs per training step: the full task set of the mini-world protocol
(experiments/base.yaml, batch 64, eager, fp32) under each method, timed side by side in
interleaved rounds (median).

    python benchmarks/weighting.py [--repeats 5] [--out benchmarks/results]

Writes weighting.md and weighting.parquet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mtv.specs import load_spec

from common import ROOT, Row, Table, interleaved, median
from step import BenchStep

FULL_SET = "[vl, distill, masked, koleo, ground, depth]"
METHODS = ("uniform", "uncertainty", "pcgrad")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    device = torch.device("cpu")
    steps = {
        method: BenchStep(
            load_spec(
                ROOT / "experiments" / "base.yaml",
                [f"tasks={FULL_SET}", f"optim.weighting={method}", "runtime.compile=false"],
            ),
            device,
        )
        for method in METHODS
    }
    for step in steps.values():
        step()  # warm-up
    times = interleaved(steps, args.repeats, device)  # type: ignore[arg-type]
    table = Table()
    base = median(times["uniform"])
    for method in METHODS:
        seconds = median(times[method])
        table.add(Row("full set", f"{method}: step", seconds, "s"))
        table.add(Row("full set", f"{method}: step / uniform", seconds / base, "x"))
    table.write(
        args.out,
        "weighting",
        "Loss weighting: the cost of a training step per method",
        "One optimiser step of experiments/base.yaml's full task set (batch 64, eager, fp32) per "
        f"`optim.weighting` method, alternating in {args.repeats} rounds (median). "
        "`python benchmarks/weighting.py`.",
    )


if __name__ == "__main__":
    main()
