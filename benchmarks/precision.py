"""fp32 against bf16 autocast: one training step of the mini-world protocol (experiments/base.yaml:
width 128, 4 layers, patch 8 at 64 px, batch 64) per task set, timed side by side in interleaved
rounds, on this CPU as it is and on this CPU limited to AVX2 (`ATEN_CPU_CAPABILITY=avx2`,
`ONEDNN_MAX_CPU_ISA=AVX2`: the kernels a CPU without AVX512-BF16/AMX runs). The row behind
`runtime.precision: auto` and its warning for an explicit bf16 on a CPU without native bf16.

    python benchmarks/precision.py [--repeats 5] [--threads 2] [--out benchmarks/results]

Each ISA runs in a process of its own (torch reads the two variables at start-up); within one
process fp32 and bf16 alternate round by round. Writes precision.md and precision.parquet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from mtv.specs import load_spec
from mtv.train.precision import native_bf16

from common import ROOT, Row, Table, interleaved, median
from step import BenchStep

TASK_SETS = {"vl": "[vl]", "full set": "[vl, distill, masked, koleo, ground, depth]"}
ISAS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def measure(repeats: int) -> dict[str, object]:
    """Median seconds per step of every task set at fp32 and at bf16, in this process."""
    device = torch.device("cpu")
    steps = {}
    for name, tasks in TASK_SETS.items():
        for precision in ("fp32", "bf16"):
            spec = load_spec(
                ROOT / "experiments" / "base.yaml",
                [f"tasks={tasks}", f"runtime.precision={precision}", "runtime.compile=false"],
            )
            steps[f"{name}|{precision}"] = BenchStep(spec, device)
    for step in steps.values():
        step()  # warm-up: first-call allocations and kernel choices
    times = interleaved(steps, repeats, device)  # type: ignore[arg-type]
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(device),
        "seconds": {key: median(values) for key, values in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.repeats)))
        return
    table = Table()
    for isa, variables in ISAS.items():
        command = [sys.executable, __file__, "--child", "--repeats", str(args.repeats)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = subprocess.run(
            command, env=os.environ | variables, capture_output=True, text=True, check=True
        )
        found = json.loads(done.stdout.strip().splitlines()[-1])
        seconds = found["seconds"]
        # The library's capability check reads the CPU's flags, which the variables do not
        # change: under avx2 the kernels are those of a CPU without bf16 whatever the flags say.
        native = found["native_bf16"] and isa == "native"
        where = f"{isa} ({found['capability']} kernels, native bf16: {'yes' if native else 'no'})"
        for name in TASK_SETS:
            fp32, bf16 = seconds[f"{name}|fp32"], seconds[f"{name}|bf16"]
            table.add(Row(where, f"{name}: fp32 step", fp32, "s"))
            table.add(Row(where, f"{name}: bf16 autocast step", bf16, "s"))
            table.add(Row(where, f"{name}: bf16 / fp32", bf16 / fp32, "x"))
    table.write(
        args.out,
        "precision",
        "Precision: fp32 against bf16 autocast, one training step",
        "One optimiser step of experiments/base.yaml (batch 64, eager) per task set, fp32 and bf16 "
        f"autocast alternating in {args.repeats} rounds (median). `avx2`: the same CPU with "
        "torch's and oneDNN's kernels limited to AVX2, as on a CPU without AVX512-BF16/AMX. "
        "`python benchmarks/precision.py`.",
    )


if __name__ == "__main__":
    main()
