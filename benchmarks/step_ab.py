"""The training step of two source trees, measured side by side in paired blocks.

    python benchmarks/step_ab.py OLD NEW [--model mini] [--batch 16] [--rounds 24] [--steps 10]

OLD and NEW are git revisions of this checkout (each exported with `git archive` into a temporary
folder) or folders holding a tree. Each tree gets one long-lived worker process that builds every
task set's step once (its own `benchmarks/step.py`: the trainer's `TrainStep` on one synthetic
batch) and then waits; the parent asks the two workers in turn for a block of `--steps` steps, in
the order A B B A, so both trees run at the same moments and a slow minute of a shared machine
falls on both. The figure that counts is the *paired* ratio new/old per round; the report gives its
median with a bootstrap 95% interval and says "no change shown" whenever the interval holds 1.

Why not two benchmark runs one after the other: on this 2-core shared machine a tree's own runs
spread by up to 20%, more than the differences a change to the step can make.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The worker runs inside one tree, with only that tree importable. It speaks one JSON line per
# request: {"task_set": name, "steps": n} -> {"seconds": s}; "ready" once every step is built.
WORKER = r"""
import json, sys, time
from step import TASK_SETS, BenchStep, Setting, bench_spec
from common import pick_device, synchronize

model, batch, device_name, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
device = pick_device(device_name)
setting = Setting(model, None, batch, device)
steps = {n: BenchStep(bench_spec(setting, TASK_SETS[n]), device) for n in names}
for step in steps.values():  # warm-up: allocator, optimiser state, kernels
    for _ in range(3):
        step()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    step = steps[request["task_set"]]
    synchronize(device)
    start = time.perf_counter()
    for _ in range(request["steps"]):
        step()
    synchronize(device)
    print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
"""


class TreeError(RuntimeError):
    """A revision or folder that cannot be measured."""


def export_tree(source: str, into: Path) -> tuple[Path, str]:
    """A folder holding the tree `source` names, and how to describe it: the folder itself, or
    the revision exported from this checkout."""
    folder = Path(source)
    if folder.is_dir():
        if not (folder / "benchmarks" / "step.py").is_file():
            raise TreeError(f"{folder}: no benchmarks/step.py; not an mtv tree")
        return folder.resolve(), str(folder)
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{source}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if rev.returncode != 0:
        raise TreeError(f"{source!r} is neither a folder nor a revision of {ROOT}")
    commit = rev.stdout.strip()
    target = into / commit
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target, commit


class Worker:
    """One tree's steps, built once in their own process, run a block at a time on request."""

    def __init__(self, tree: Path, model: str, batch: int, device: str, task_sets: list[str]):
        env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'benchmarks'}")
        self.tree = tree
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-c", WORKER, model, str(batch), device, *task_sets],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()  # "ready"

    def _read(self) -> dict[str, object]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise TreeError(f"the worker for {self.tree} ended (exit code {code}); see above")
        return json.loads(line)

    def block(self, task_set: str, steps: int) -> float:
        """Seconds per step over one block of `steps` steps."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"task_set": task_set, "steps": steps}) + "\n")
        self.process.stdin.flush()
        return float(self._read()["seconds"]) / steps  # type: ignore[arg-type]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


@dataclass(frozen=True)
class Comparison:
    """One task set's paired measurement: seconds per step per round, for each tree."""

    task_set: str
    old: list[float]
    new: list[float]

    @property
    def ratios(self) -> list[float]:
        return [n / o for o, n in zip(self.old, self.new, strict=True)]

    def interval(self, draws: int = 4000, seed: int = 0) -> tuple[float, float]:
        """Bootstrap 95% interval of the median paired ratio (rounds resampled with
        replacement)."""
        rng = random.Random(seed)
        ratios = self.ratios
        medians = sorted(
            statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws)
        )
        return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]

    def verdict(self) -> str:
        low, high = self.interval()
        if low <= 1.0 <= high:
            return f"no change shown (new within {low:.2f}-{high:.2f}x of old)"
        return f"new {'slower' if low > 1.0 else 'faster'} ({low:.2f}-{high:.2f}x of old)"


def measure(
    old: Worker, new: Worker, task_sets: list[str], rounds: int, steps: int, pause: float
) -> list[Comparison]:
    """`rounds` paired blocks per task set, the pair's order alternating (A B, B A, ...). The
    pause lets the previous worker's OpenMP threads stop spinning before the other one runs."""
    times: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in task_sets}
    for r in range(rounds):
        for name in task_sets:
            pair = [(old, times[name][0]), (new, times[name][1])]
            for worker, into in pair if r % 2 == 0 else pair[::-1]:
                time.sleep(pause)
                into.append(worker.block(name, steps))
        done = {n: statistics.median(t[1]) / statistics.median(t[0]) for n, t in times.items()}
        shown = ", ".join(f"{n} {v:.3f}x" for n, v in done.items())
        print(f"round {r + 1}/{rounds}: new/old so far {shown}", file=sys.stderr, flush=True)
    return [Comparison(n, *times[n]) for n in task_sets]


def report(comparisons: list[Comparison], old: str, new: str, setting: str) -> str:
    """The Markdown table: medians per tree, the median paired ratio, its interval, the verdict."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import machine

    lines = [
        f"Machine: {machine()}. Old: {old}; new: {new}. {setting}.",
        "",
        "| task set | old median (ms) | new median (ms) | median paired new/old | 95% interval "
        "| rounds | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        low, high = c.interval()
        lines.append(
            f"| {c.task_set} | {1e3 * statistics.median(c.old):.1f} "
            f"| {1e3 * statistics.median(c.new):.1f} | {statistics.median(c.ratios):.3f}x "
            f"| {low:.3f}-{high:.3f} | {len(c.ratios)} | {c.verdict()} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="a git revision of this checkout, or a folder holding a tree")
    parser.add_argument("new", help="as OLD")
    parser.add_argument("--model", default="mini", help="an encoder preset of benchmarks/step.py")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds idle before a block")
    parser.add_argument("--task-sets", nargs="+", default=["vl", "vl+ssl+ground+depth"])
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the order alternates between rounds)")
    with tempfile.TemporaryDirectory(prefix="mtv-step-ab-") as scratch:
        try:
            (old_tree, old), (new_tree, new) = (
                export_tree(s, Path(scratch)) for s in (args.old, args.new)
            )
            workers = [
                Worker(t, args.model, args.batch, args.device, args.task_sets)
                for t in (old_tree, new_tree)
            ]
            try:
                comparisons = measure(*workers, args.task_sets, args.rounds, args.steps, args.pause)
            finally:
                for worker in workers:
                    worker.close()
        except TreeError as err:  # a revision that is not there, or a worker that died
            sys.exit(f"step_ab: {err}")
    setting = (
        f"`benchmarks/step_ab.py` --model {args.model} --batch {args.batch} --device "
        f"{args.device}, {args.rounds} rounds of {args.steps} steps per tree and task set"
    )
    table = report(comparisons, old, new, setting)
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
