"""The EMA teacher: frozen moving-average copies of the student encoder and of the heads of the
tasks that distil from it. It holds no gradients and is never wrapped in DDP."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mtv.models.vit import VisionTransformer


class EMATeacher(nn.Module):
    def __init__(
        self,
        encoder: VisionTransformer,
        heads: Mapping[str, Mapping[str, nn.Module]],
        momentum: float,
    ):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.heads = nn.ModuleDict(
            {
                kind: nn.ModuleDict({name: copy.deepcopy(m) for name, m in modules.items()})
                for kind, modules in heads.items()
            }
        )
        self.momentum = momentum
        self.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: list[Tensor], momentum: float | None = None) -> None:
        """θ_t <- m θ_t + (1 - m) θ_s for every parameter, in two fused `_foreach` calls.
        `student` lists the student's parameters in the order of `self.parameters()`."""
        m = self.momentum if momentum is None else momentum
        teacher = list(self.parameters())
        if len(teacher) != len(student):
            raise ValueError(f"teacher has {len(teacher)} tensors, student gave {len(student)}")
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, [p.detach() for p in student], alpha=1.0 - m)
