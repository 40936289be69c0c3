"""The EMA teacher: frozen moving-average copies of the student encoder and of the heads of the
tasks that distil from it. It holds no gradients, is never wrapped in DDP, and runs its own
passes of the plan through its own encoder."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtv.data.batch import Batch
from mtv.graph.passes import encode_passes
from mtv.graph.plan import ViewPass
from mtv.models.vit import VisionTransformer
from mtv.tasks.base import Task


class EMATeacher(nn.Module):
    """`encoder` mirrors the student encoder; `heads[kind][name]` mirrors the module that task
    `kind` returned under `name` from `ema_modules()`; `passes` are the plan's teacher passes."""

    def __init__(
        self,
        encoder: VisionTransformer,
        heads: Mapping[str, Mapping[str, nn.Module]],
        passes: tuple[ViewPass, ...],
    ):
        super().__init__()
        self.passes = passes
        self.encoder = copy.deepcopy(encoder)
        self.heads = nn.ModuleDict(
            {
                kind: nn.ModuleDict({name: copy.deepcopy(m) for name, m in modules.items()})
                for kind, modules in heads.items()
            }
        )
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, batch: Batch, step: Tensor, tasks: Mapping[str, Task]) -> dict[str, Any]:
        """Task kind -> what its `teacher_targets` makes of this teacher's passes and its own
        head copies (e.g. `SoftTargets`), for each task that distils. `tasks` are the student's
        task modules, passed in (not held, so they are not registered here a second time)."""
        outputs = encode_passes(self.encoder, self.passes, batch)
        return {
            kind: task.teacher_targets(outputs, self.heads[kind], batch, step)
            for kind, task in tasks.items()
            if kind in self.heads
        }


@torch.no_grad()
def ema_update(teacher: list[Tensor], student: list[Tensor], weight: float | Tensor) -> None:
    """θ_t <- θ_t + w (θ_s - θ_t) = m θ_t + (1 - m) θ_s with w = 1 - m, for every pair, in one
    `_foreach_lerp_`. `weight` may be a 0-d tensor on the parameters' device (the training step
    decides it there: 0 on a skipped step), and is then never read on the host.

    A tensor weight goes in as a list of tensors (`_foreach_lerp_.List`): the overload with one
    weight takes a Python scalar, so a tensor handed to it is converted through
    `aten._local_scalar_dense`, a device sync every step. Per element it is the same `lerp` as
    with a number, so the result is the same. (On CUDA the list of 0-d weights takes the
    per-tensor path: a launch per tensor, but no sync and no temporary copy of the weights.)"""
    if len(teacher) != len(student):
        raise ValueError(f"{len(teacher)} teacher tensors but {len(student)} student tensors")
    if not teacher:
        return
    students = [s.detach() for s in student]
    if isinstance(weight, Tensor):
        # lerp wants the weight in the parameters' dtype; a no-op when it already is.
        weight = weight.to(dtype=teacher[0].dtype)
        torch._foreach_lerp_(teacher, students, [weight] * len(teacher))
    else:
        torch._foreach_lerp_(teacher, students, weight)
