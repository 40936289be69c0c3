"""Jobs side by side against one job with every core: the training throughput of a sweep on
this CPU with `executor: {kind: local, parallel: N}` (N jobs, cores / N threads each) against
one job at a time with all the cores, per task set of the mini-world protocol
(experiments/base.yaml, batch 64, fp32, eager).

    python benchmarks/sweep_parallel.py [--parallel 2] [--seconds 30] [--repeats 2]

Each configuration runs its training steps (the trainer's own step on a fixed batch, loader
excluded) in child processes that start measuring at one agreed moment, after their warm-up,
and count the steps they finish in the same window: throughput is the sum over a
configuration's processes. The two configurations alternate round by round, so drift in the
machine's load falls on both. Writes sweep_parallel.md and sweep_parallel.parquet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import ROOT, Row, Table, median

TASK_SETS = {
    "vl": "[vl]",
    "vl+ssl": "[vl, distill, masked, koleo]",
    "full set": "[vl, distill, masked, koleo, ground, depth]",
}
WARM_UP_S = 40.0  # time given to every child to build its model and take two steps


def child(tasks: str, threads: int, start: float, seconds: float) -> None:
    """Steps per second of one process between `start` and `start + seconds` (epoch time)."""
    torch.set_num_threads(threads)
    from mtv.specs import load_spec

    from step import BenchStep

    spec = load_spec(
        ROOT / "experiments" / "base.yaml",
        [f"tasks={tasks}", "runtime.precision=fp32", "runtime.compile=false"],
    )
    step = BenchStep(spec, torch.device("cpu"))
    step()
    step()
    if time.time() > start:
        raise SystemExit(f"warm-up took longer than {WARM_UP_S} s: raise WARM_UP_S")
    while time.time() < start:
        step()  # keep the machine as busy as during the window until it opens
    steps = 0
    while time.time() < start + seconds:
        step()
        steps += 1
    print(json.dumps({"steps_per_s": steps / seconds}))


def throughput(tasks: str, processes: int, threads: int, seconds: float) -> float:
    """Training steps per second of `processes` side-by-side processes of `threads` threads."""
    start = time.time() + WARM_UP_S
    command = [sys.executable, __file__, "--child", tasks, str(threads), str(start), str(seconds)]
    running = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    total = 0.0
    for process in running:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a measuring process failed: {out}")
        total += json.loads(out.strip().splitlines()[-1])["steps_per_s"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tasks, threads, start, seconds = args.child
        child(tasks, int(threads), float(start), float(seconds))
        return
    cores = os.cpu_count() or 1
    shared = max(1, cores // args.parallel)
    table = Table()
    for name, tasks in TASK_SETS.items():
        one, side_by_side = [], []
        for r in range(args.repeats):
            for config in ("one", "side") if r % 2 == 0 else ("side", "one"):
                if config == "one":
                    one.append(throughput(tasks, 1, cores, args.seconds))
                else:
                    side_by_side.append(throughput(tasks, args.parallel, shared, args.seconds))
        jobs = f"{args.parallel} jobs x {shared} thread(s)"
        table.add(Row(name, f"1 job x {cores} threads", 64 * median(one), "images/s"))
        table.add(Row(name, jobs, 64 * median(side_by_side), "images/s"))
        table.add(Row(name, "side by side / one job", median(side_by_side) / median(one), "x"))
    table.write(
        args.out,
        "sweep_parallel",
        "Sweep jobs side by side against one job with every core",
        f"Training throughput (images/s, batch 64) of experiments/base.yaml's step (fp32, eager, "
        f"loader excluded) per task set: one process with all {cores} cores' threads against "
        f"{args.parallel} processes side by side with {shared} thread(s) each (what "
        f"`executor: {{kind: local, parallel: {args.parallel}}}` gives each job), over the same "
        f"{args.seconds:.0f} s window, the two alternating in {args.repeats} rounds (median). "
        f"`python benchmarks/sweep_parallel.py --parallel {args.parallel}`.",
    )


if __name__ == "__main__":
    main()
