"""Before/after figures of the step optimisations, measured by toggling each one in this process
on the same trainer (interleaved with the current code, medians over repeats):

- shared region texts (mtv/graph.py `StudentModel.share_region_texts`): each distinct region
  name is encoded once per step; before, the text tower ran over every name slot, padding
  included. Off = before.
- fused AdamW (mtv/train/trainer.py `fused=True`): before, torch's default implementation (a
  loop over parameters on CPU, `_foreach_` kernels on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from common import Row, interleaved, median
from step import FULL, TASK_SETS, Setting, bench_spec, count_flops, make_trainer, train_step

PART = "6 optimisations"


def optimisation_rows(setting: Setting, repeats: int) -> list[Row]:
    trainer = make_trainer(bench_spec(setting, TASK_SETS[FULL]), setting.device)
    student = trainer.graph.student
    fused = trainer.optimizer
    optim = trainer.spec.optim
    default = torch.optim.AdamW(
        trainer.params,
        lr=optim.lr,
        betas=optim.betas,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
    )

    def configure(share: bool, optimizer: torch.optim.Optimizer) -> Callable[[], object]:
        def step() -> object:
            student.share_region_texts = share
            trainer.optimizer = optimizer
            return train_step(trainer)

        return step

    steps = {
        "now": configure(True, fused),
        "before shared region texts": configure(False, fused),
        "before fused AdamW": configure(True, default),
    }
    for step in steps.values():  # warm-up; the default optimiser's state is made here
        step()
        step()
    flops = {name: count_flops(steps[name]) for name in ("now", "before shared region texts")}
    times = {n: median(v) for n, v in interleaved(steps, repeats, setting.device).items()}
    # The optimiser step alone (gradients of the last step are still there).
    updates = {"fused": fused.step, "default": default.step}
    update_times = {n: median(v) for n, v in interleaved(updates, repeats, setting.device).items()}
    steps["now"]()  # leave the trainer as the library builds it
    rows = [Row(PART, "full-set step, now", times["now"], "s", note=f"median of {repeats}")]
    for name in ("before shared region texts", "before fused AdamW"):
        rows += [
            Row(PART, f"full-set step, {name}", times[name], "s", note="toggled in-process"),
            Row(PART, f"full-set step now / {name}", times["now"] / times[name], "x"),
        ]
    rows += [
        Row(
            PART,
            "full-set step FLOPs now / before shared region texts",
            flops["now"] / flops["before shared region texts"],
            "x",
            note="synthetic names: about half of the slots distinct, as on the mini-world",
        ),
        Row(PART, "AdamW step, fused", update_times["fused"], "s"),
        Row(PART, "AdamW step, default (before)", update_times["default"], "s"),
        Row(
            PART, "AdamW step fused / default", update_times["fused"] / update_times["default"], "x"
        ),
    ]
    return rows
