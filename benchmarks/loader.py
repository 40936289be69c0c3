"""Loader benchmark: the loader's samples/s against what the training step consumes, and the
fraction of a real (short) training run spent waiting for data.

    python benchmarks/loader.py [--model mini] [--batch 32] [--scenes 512]

The loader reads a mini-world corpus (64 px renders, exact oracle labels) and cuts the views the
full task set asks for at the benchmark's sizes (renders smaller than the global view are scaled
up, as any small source image would be). `benchmarks/run.py` runs this as part 4.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mtv.data.batch import Batch
from mtv.data.loader import build_stream
from mtv.graph import plan_graph
from mtv.specs import ExperimentSpec
from mtv.train import Trainer
from mtv.train.prepare import prepare_data
from mtv.world.corpus import render_corpus

from common import Row, Table, interleaved, median, pick_device, timed
from step import FULL, MODELS, TASK_SETS, BenchStep, Setting, bench_spec

PART = "4 loader"


def default_workers() -> int:
    """2 on a 2-core machine (the experiments' default), up to 8 where cores are plentiful."""
    return max(2, min(8, (os.cpu_count() or 2) // 2))


def world_overrides(world: Path, scenes: int, workers: int) -> list[str]:
    """Spec overrides that point an experiment at a rendered corpus (labelled on first use)."""
    return [
        f"data.source={{kind: miniworld, root: '{world}', n_images: {scenes}, image_size: 64}}",
        f"data.labels.store='{world / 'labels.zarr'}'",
        "data.labels.kinds=[boxes, depth]",
        f"data.loader.workers={workers}",
    ]


def loader_rate(spec: ExperimentSpec, batches: int = 16) -> tuple[float, Batch]:
    """Sustained samples/s of the spec's loader (pinning batches on CUDA, as the trainer does),
    and one of its batches. The prefetch queue is drained first, so the figure is the workers'
    rate, not how fast a full queue empties."""
    data = prepare_data(spec, report=lambda m: None)
    stream = build_stream(
        spec.data,
        plan_graph(spec).view_request(),
        data.source,
        data.store,
        data.tokenizer,
        pin_memory=spec.runtime.device == "cuda",
    )
    workers = spec.data.loader.workers
    for _ in range(1 + 4 * workers):  # start-up, then the queue (prefetch_factor 4 per worker)
        batch, _ = next(stream)
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        next(stream)
        times.append(time.perf_counter() - start)
    # Mean, not median: with workers, most next() calls return at once and a few wait for a
    # whole batch; only the sum over many calls says how fast batches come.
    return spec.data.batch_size / statistics.fmean(times), batch


def copy_rows(batch: Batch, device: torch.device, repeats: int = 5) -> list[Row]:
    """The trainer's host-to-device copy of one batch from pageable memory (before the loader
    pinned batches for CUDA) and from pinned memory (now), interleaved."""
    pageable = Batch(**{k: v.clone() if v is not None else None for k, v in vars(batch).items()})
    pinned = pageable.pin_memory()
    copies = {
        "pageable": lambda: pageable.to(device, non_blocking=True),
        "pinned": lambda: pinned.to(device, non_blocking=True),
    }
    for copy in copies.values():
        copy()
    times = {n: median(v) for n, v in interleaved(copies, repeats, device).items()}
    size = sum(v.nbytes for v in vars(batch).values() if v is not None) / 2**20
    note = f"one batch, {size:.0f} MiB"
    return [
        Row(PART, "batch copy to GPU, pageable (before)", times["pageable"], "s", note=note),
        Row(PART, "batch copy to GPU, pinned (now)", times["pinned"], "s", note=note),
    ]


def training_wait(spec: ExperimentSpec, steps: int, run_dir: Path) -> dict[str, float]:
    """A real training run of `steps` steps through `Trainer.run`: the data-wait fraction it
    logs per step (time blocked in next(stream) over the step's wall time)."""
    spec = spec.model_copy(
        update={
            "schedule": spec.schedule.model_copy(update={"steps": steps, "warmup_steps": 1}),
            "output": spec.output.model_copy(update={"checkpoint_every": steps}),
        }
    )
    trainer = Trainer(spec, run_dir, report=lambda m: None)
    trainer.run()
    rows = [r for r in trainer.metrics.rows if not r["skipped"]]
    later = rows[1:]  # step 0 waits for the workers to start
    wall = [spec.data.batch_size / r["images_per_s"] for r in later]
    waits = [r["data_wait_fraction"] * w for r, w in zip(later, wall, strict=True)]
    return {
        "first": rows[0]["data_wait_fraction"],
        "median": median([r["data_wait_fraction"] for r in later]),
        "overall": sum(waits) / sum(wall),
        "step_s": median(wall),
    }


def loader_rows(
    setting: Setting, world: Path, scenes: int, step_seconds: float, steps: int, tmp: Path
) -> list[Row]:
    """Loader rate over the step's demand (target >= 2) and the data-wait of a short run."""
    workers = default_workers()
    spec = bench_spec(setting, TASK_SETS[FULL], extra=world_overrides(world, scenes, workers))
    rate, batch = loader_rate(spec)
    demand = setting.batch / step_seconds
    note = f"{workers} workers, batch {setting.batch}, 64 px renders"
    wait = training_wait(spec, steps, tmp / "run")
    copies = copy_rows(batch, setting.device) if setting.device.type == "cuda" else []
    rows = [
        Row(PART, "loader rate, full-set views", rate, "samples/s", note=note),
        Row(PART, "step demand, full set", demand, "samples/s", note="eager step (part 1)"),
        Row(PART, "loader rate / step demand", rate / demand, "x", ">= 2", rate / demand >= 2),
        Row(
            PART,
            "data-wait fraction, short training run",
            wait["overall"],
            "fraction",
            note=f"{steps} eager steps after the first; median per step {wait['median']:.3f}; "
            f"step {wait['step_s']:.3g} s",
        ),
        Row(PART, "data-wait fraction, first step", wait["first"], "fraction", note="worker start"),
    ]
    return rows + copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=list(MODELS), default="mini")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--scenes", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    setting = Setting(args.model, args.image_size, args.batch, pick_device())
    step = BenchStep(bench_spec(setting, TASK_SETS[FULL]), setting.device)
    step_seconds = median([timed(step, setting.device) for _ in range(4)])
    table = Table()
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        render_corpus(world, args.scenes, size=64)
        table.extend(loader_rows(setting, world, args.scenes, step_seconds, args.steps, Path(tmp)))


if __name__ == "__main__":
    main()
