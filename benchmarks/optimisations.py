"""Before/after figures of the step optimisations, measured by toggling each one in this process
on the same trainer (interleaved with the current code, medians over repeats):

- shared region names (`Batch.share_region_names`, in the loader's collate): each distinct
  region name is encoded once per step; before, the text tower ran over every name slot,
  padding included (the same batch with one name row per slot).
- fused AdamW (mtv/train/step.py `fused=True`), the optimiser step alone: before, torch's
  default implementation (a loop over parameters on CPU, `_foreach_` kernels on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from mtv.data.batch import Batch

from common import Row, interleaved, median
from step import FULL, TASK_SETS, BenchStep, Setting, bench_spec, count_flops

PART = "6 optimisations"


def per_slot_names(batch: Batch) -> Batch:
    """The batch as before the names were shared: one name row per region slot."""
    if batch.region_names is None or batch.region_name_index is None:
        return batch
    index = batch.region_name_index
    slots = torch.arange(index.numel(), device=index.device).reshape(index.shape)
    return replace(batch, region_names=batch.region_names[index.flatten()], region_name_index=slots)


def optimisation_rows(setting: Setting, repeats: int) -> list[Row]:
    bench = BenchStep(bench_spec(setting, TASK_SETS[FULL]), setting.device)
    shared = bench.batch
    separate = per_slot_names(shared)

    def with_batch(batch: Batch) -> Callable[[], object]:
        def step() -> object:
            bench.batch = batch
            return bench()

        return step

    steps = {"now": with_batch(shared), "before shared region texts": with_batch(separate)}
    for step in steps.values():  # warm-up
        step()
        step()
    flops = {name: count_flops(step) for name, step in steps.items()}
    times = {n: median(v) for n, v in interleaved(steps, repeats, setting.device).items()}
    steps["now"]()  # leave the step as the library builds it
    # The optimiser step alone (the gradients of the last step are still there). The step uses
    # the fused kernel throughout: it is also what skips a non-finite step on the device.
    fused = bench.stepper.optimizer
    optim = bench.spec.optim
    default = torch.optim.AdamW(
        [{"params": group["params"]} for group in fused.param_groups],
        lr=optim.lr,
        betas=optim.betas,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
    )
    updates = {"fused": fused.step, "default": default.step}
    update_times = {n: median(v) for n, v in interleaved(updates, repeats, setting.device).items()}
    name = "before shared region texts"
    return [
        Row(PART, "full-set step, now", times["now"], "s", note=f"median of {repeats}"),
        Row(PART, f"full-set step, {name}", times[name], "s", note="toggled in-process"),
        Row(PART, f"full-set step now / {name}", times["now"] / times[name], "x"),
        Row(
            PART,
            f"full-set step FLOPs now / {name}",
            flops["now"] / flops[name],
            "x",
            note="synthetic names: about half of the slots distinct, as on the mini-world",
        ),
        Row(PART, "AdamW step, fused", update_times["fused"], "s"),
        Row(PART, "AdamW step, default (before)", update_times["default"], "s"),
        Row(
            PART, "AdamW step fused / default", update_times["fused"] / update_times["default"], "x"
        ),
    ]
