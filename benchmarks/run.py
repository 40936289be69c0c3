"""The performance suite: every part, one results table.

    python benchmarks/run.py                 # CPU default: the mini model, batch 16
    python benchmarks/run.py --quick         # fewer repeats, smaller corpus, no compile
    python benchmarks/run.py --model B16 --image-size 224 --batch 64   # the GPU setting

Parts: 1 step time per task set relative to VL-only, with peak memory; 2 encoder utilisation
against the dense matmul rate; 3 compiled against eager steps; 4 loader rate against the step's
demand and the data-wait of a short real run; 5 renderer, labelling experts and label-store
writes. Writes benchmarks/results/performance.md and .parquet (after every part, so an
interrupted run keeps what it measured). benchmarks/README.md explains each figure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from mtv.world.corpus import render_corpus

from common import ROOT, Row, Table, pick_device, section
from data import measure
from loader import loader_rows
from optimisations import optimisation_rows
from step import MODELS, Setting, compile_rows, task_set_rows, utilisation_rows

PARTS = ("1", "2", "3", "4", "5", "6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=list(MODELS), default="mini")
    parser.add_argument("--image-size", type=int, default=None, help="global view (px)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto: CUDA when visible")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per timing (5; quick 3)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: all cores)"
    )
    parser.add_argument(
        "--compile-backend",
        choices=["inductor", "aot_eager", "eager"],
        default="inductor",
        help="part 3's torch.compile backend (eager: dynamo's tracing alone, fast on a CPU)",
    )
    parser.add_argument(
        "--require-compile",
        action="store_true",
        help="exit 1 when part 3 cannot compile the step (it is otherwise a row of the table)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--stem", default="performance")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = Setting(args.model, args.image_size, args.batch, pick_device(args.device))
    repeats = args.repeats or (3 if args.quick else 5)
    scenes, steps = (256, 8) if args.quick else (512, 12)
    started = time.perf_counter()
    table = Table()
    preamble = (
        f"Setting: {setting.describe()}, {torch.get_num_threads()} CPU thread(s); {repeats} "
        "interleaved rounds per timing"
        f"{' (--quick)' if args.quick else ''}. Command: `python benchmarks/run.py --model "
        f"{args.model} --batch {args.batch}"
        + (f" --image-size {args.image_size}" if args.image_size else "")
        + (" --quick" if args.quick else "")
        + (f" --threads {args.threads}" if args.threads else "")
        + "`. Targets are met/not met where this setting is the one they are stated for."
    )

    def write() -> None:
        table.write(args.out, args.stem, "Performance benchmarks", preamble)

    step_seconds: list[float] = []
    loader_rate: float | None = None
    # Compilation last: it takes longest, and an interrupted run keeps everything before it.
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # A fresh inductor cache: compilation times are cold ones, comparable between runs.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp / "inductor"))
        if "1" in args.parts:
            with section(table, "1 task sets"):
                rows, full = task_set_rows(setting, repeats)
                table.extend(rows)
                step_seconds.append(full)
            write()
        if "6" in args.parts:
            with section(table, "6 optimisations"):
                table.extend(optimisation_rows(setting, repeats))
            write()
        if "2" in args.parts:
            with section(table, "2 utilisation"):
                table.extend(utilisation_rows(setting, repeats, compile=not args.quick))
            write()
        world = tmp / "world"
        if "5" in args.parts:
            with section(table, "5 data"):
                world = measure(table, tmp, scenes, args.quick)
            write()
        if "4" in args.parts:
            with section(table, "4 loader"):
                if not (world / "world.json").exists():
                    render_corpus(world, scenes, size=64)
                if not step_seconds:  # the loader is compared with part 1's step
                    raise RuntimeError("part 4 needs part 1's full-set step time")
                rows = loader_rows(setting, world, scenes, step_seconds[0], steps, tmp)
                table.extend(rows)
                loader_rate = next(r.value for r in rows if r.measure.startswith("loader rate"))
            write()
        if "3" in args.parts and not args.quick:
            with section(table, "3 compile"):
                rows = compile_rows(setting, repeats, backend=args.compile_backend)
                table.extend(rows)
                failed = [r.note for r in rows if r.note.startswith("compile failed")]
                compiled = [r.value for r in rows if r.measure == "full-set step, compiled"]
                if loader_rate and compiled and compiled[0]:
                    ratio = loader_rate * compiled[0] / setting.batch
                    table.add(
                        Row(
                            "4 loader",
                            "loader rate / compiled step demand",
                            ratio,
                            "x",
                            ">= 2",
                            ratio >= 2,
                            note="demand of the compiled step (part 3)",
                        )
                    )
            write()
            if failed and args.require_compile:
                raise SystemExit(f"part 3: {failed[0]}")
    total = time.perf_counter() - started
    within = total < 600 if setting.device.type == "cpu" else None
    table.add(Row("all", "suite wall time", total, "s", "< 600 on CPU", within))
    write()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    print(f"wrote {args.out / (args.stem + '.md')} and .parquet in {total:.0f} s")


if __name__ == "__main__":
    main()
