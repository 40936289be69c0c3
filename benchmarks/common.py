"""Helpers shared by the benchmark scripts: the machine's name, the device and its precision,
side-by-side timing, and results tables (Markdown + Parquet)."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` runs from anywhere
    sys.path.insert(0, str(ROOT))


def machine() -> str:
    """Host, CPU, accelerator and torch version: what a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    name = f"{platform.node()}: {os.cpu_count()} CPU cores ({cpu})"
    if torch.cuda.is_available():
        name += f", {torch.cuda.get_device_name()}"
    return f"{name}, torch {torch.__version__}"


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def precision(device: torch.device) -> str:
    """bf16 autocast on CUDA (the paper's setting); fp32 on CPU, where bf16 is emulated on most
    cores and would measure the emulation rather than the model."""
    return "bf16" if device.type == "cuda" else "fp32"


def compute_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if precision(device) == "bf16" else torch.float32


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    if precision(device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds `fn` takes, with the device drained before and after (CUDA work is asynchronous)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Time every function once per round, `repeats` rounds, rotating the order each round (A B C,
    B C A, ...): load from other processes then falls on every configuration alike, so ratios of
    the medians are fair even when absolute times drift."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(fns[name], device))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def median_rate(work: int, run: Callable[[], object], repeats: int = 3) -> float:
    """`work` units over the median time of `repeats` runs of `run` (CPU work)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return work / statistics.median(times)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclass
class Row:
    """One figure of a results table."""

    part: str
    measure: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None  # None: no target, or not measurable here
    note: str = ""


class Table:
    """Rows of figures, printed as they come and written as Markdown + Parquet."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        value = "n/a" if row.value is None else f"{row.value:.4g}"
        met = "" if row.met is None else ("  [met]" if row.met else "  [NOT met]")
        print(f"[{row.part}] {row.measure}: {value} {row.unit}{met} {row.note}", flush=True)
        return row

    def extend(self, rows: list[Row]) -> None:
        for row in rows:
            self.add(row)

    def write(self, out: Path, stem: str, title: str, preamble: str = "") -> None:
        import polars as pl

        out.mkdir(parents=True, exist_ok=True)
        name = machine()
        frame = pl.DataFrame(
            [asdict(r) for r in self.rows],
            schema={
                "part": pl.String,
                "measure": pl.String,
                "value": pl.Float64,
                "unit": pl.String,
                "target": pl.String,
                "met": pl.Boolean,
                "note": pl.String,
            },
        ).with_columns(pl.lit(name).alias("machine"))
        frame.write_parquet(out / f"{stem}.parquet")
        lines = [f"# {title}\n", f"Machine: {name}\n"]
        if preamble:
            lines.append(preamble.rstrip() + "\n")
        lines += ["| part | measure | value | unit | target | met | note |", "|---" * 7 + "|"]
        for r in self.rows:
            value = "n/a" if r.value is None else f"{r.value:.4g}"
            met = "" if r.met is None else ("yes" if r.met else "**no**")
            note = r.note.replace("|", "/")
            lines.append(
                f"| {r.part} | {r.measure} | {value} | {r.unit} | {r.target} | {met} | {note} |"
            )
        (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


@contextmanager
def section(table: Table, part: str) -> Iterator[None]:
    """Run one part of a suite; a failure becomes a row naming it instead of ending the suite."""
    start = time.perf_counter()
    try:
        yield
    except Exception as err:  # a benchmark part must not take the others down with it
        traceback.print_exc()
        message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        table.add(Row(part, "FAILED", None, "", note=message[:300]))
    table.add(Row(part, "part wall time", time.perf_counter() - start, "s"))
    gc.collect()  # the part's models go before the next part builds its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
