"""Where the time goes: torch.profiler's top operators of the encoder forward+backward and of
the full task set's training step, at the benchmark setting.

    python benchmarks/hotspots.py [--model mini] [--batch 16] [--rows 15] [--out FILE]

Sorted by self device time on CUDA, self CPU time on CPU. The tables explain the targets that
benchmarks/run.py reports as not met.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from common import autocast, pick_device, synchronize
from step import FULL, MODELS, TASK_SETS, BenchStep, Setting, bench_spec


def top_ops(fn: Callable[[], object], device: torch.device, rows: int) -> str:
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    fn()  # warm-up outside the profile
    synchronize(device)
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=list(MODELS), default="mini")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args()
    setting = Setting(args.model, args.image_size, args.batch, pick_device())
    step = BenchStep(bench_spec(setting, TASK_SETS[FULL]), setting.device)
    encoder, batch = step.graph.student.encoder, step.batch

    def encoder_step() -> None:
        encoder.zero_grad(set_to_none=True)
        with autocast(setting.device):
            out = encoder(batch.images, pool=True)
        assert out.pooled is not None
        (out.pooled.float().sum() + out.tokens.float().mean()).backward()

    sections = {
        "encoder forward+backward (global view, eager)": encoder_step,
        "full task set training step (eager)": step,
    }
    text = f"# {setting.describe()}\n"
    for title, fn in sections.items():
        text += f"\n## {title}\n{top_ops(fn, setting.device, args.rows)}\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
