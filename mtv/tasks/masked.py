"""`masked`: iBOT masked-patch prediction. The student sees the global crop with block-masked
patches replaced by the mask token; the teacher's scores of the unmasked crop at the masked
positions are the targets. Its head and centering are separate from `distill`'s."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mtv.data.batch import Batch
from mtv.models.vit import EncoderOutput
from mtv.tasks.base import (
    GLOBAL,
    MASKED,
    StepInputs,
    TaskEnv,
    TaskNeeds,
    TaskOutput,
    fp32,
    register_task,
)
from mtv.tasks.ssl_heads import (
    SelfDistillationTask,
    SoftTargets,
    SSLHeadSpec,
    distillation_cross_entropy,
    entropy,
)


class MaskedTaskSpec(SSLHeadSpec):
    """iBOT masked-patch prediction on a block-masked copy of the global view."""

    kind: Literal["masked"] = "masked"
    weight: float = Field(2.0, ge=0.0, description="lambda_mask (paper: 2)")
    mask_ratio: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of patches masked")
    min_block_patches: int = Field(4, gt=0, description="smallest masking block (DINOv2: 4)")
    block_aspect: tuple[float, float] = Field(
        (0.3, 1 / 0.3), description="aspect-ratio range of masking blocks"
    )

    @model_validator(mode="after")
    def _check_aspect(self) -> MaskedTaskSpec:
        low, high = self.block_aspect
        if not 0 < low <= high:
            raise ValueError(f"block_aspect must satisfy 0 < low <= high, got {self.block_aspect}")
        return self


def block_mask(
    rows: int,
    cols: int,
    n_masked: int,
    min_block: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    max_attempts: int = 10,
) -> Tensor:
    """A (rows * cols) bool mask with exactly `n_masked` True entries, grown from random
    rectangles (area >= `min_block` patches, log-uniform aspect ratio) as in BEiT/DINOv2; when no
    rectangle fits any more, single random patches complete the count. An exact count keeps the
    per-image masked set a static shape, so the step compiles once."""
    if not 0 <= n_masked <= rows * cols:
        raise ValueError(f"cannot mask {n_masked} of {rows * cols} patches")
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    count = 0
    while count < n_masked:
        remaining = n_masked - count
        added = 0
        for _ in range(max_attempts):
            if remaining < min_block:
                break
            area = uniform(min_block, remaining)
            ratio = math.exp(uniform(log_low, log_high))
            height = round(math.sqrt(area * ratio))
            width = round(math.sqrt(area / ratio))
            if not (0 < height <= rows and 0 < width <= cols):
                continue
            top = int(torch.randint(0, rows - height + 1, (), generator=generator))
            left = int(torch.randint(0, cols - width + 1, (), generator=generator))
            window = mask[top : top + height, left : left + width]
            fresh = int((~window).sum())
            if 0 < fresh <= remaining:
                window[:] = True
                added = fresh
                break
        if added == 0:
            free = (~mask).flatten().nonzero().flatten()
            pick = free[torch.randperm(free.numel(), generator=generator)[:remaining]]
            mask.view(-1)[pick] = True
            added = remaining
        count += added
    return mask.flatten()


def draw_patch_mask(
    spec: MaskedTaskSpec, env: TaskEnv, generator: torch.Generator | None = None
) -> Tensor:
    """One image's (N,) patch mask for the global view, as the loader draws it: exactly
    round(mask_ratio * N) patches in blocks."""
    grid = env.global_grid
    return block_mask(
        grid,
        grid,
        MaskedTask.masked_count(spec, env),
        spec.min_block_patches,
        spec.block_aspect,
        generator,
    )


def masked_patch_loss(
    teacher_probs: Tensor, student_scores: Tensor, weights: Tensor, student_temp: float
) -> Tensor:
    """L = (1/B) Σ_i (1/n_i) Σ_{j masked in i} H(P_t(i, j), softmax(p_s(i, j) / tau_s)).

    `teacher_probs` and `student_scores` are (B, S, K) at S selected positions per image;
    `weights` (B, S) is 1 where a selected position is masked and 0 elsewhere, so n_i is its row
    sum: each image weighs the same whatever its masked count (iBOT/DINOv2).
    """
    ce = distillation_cross_entropy(teacher_probs, student_scores, student_temp)
    per_image = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return (ce * per_image).sum() / teacher_probs.shape[0]


@register_task
class MaskedTask(SelfDistillationTask):
    spec_class = MaskedTaskSpec
    spec: MaskedTaskSpec

    def __init__(self, spec: MaskedTaskSpec, env: TaskEnv):
        super().__init__(spec, env)
        self.n_masked = self.masked_count(spec, env)

    @staticmethod
    def masked_count(spec: MaskedTaskSpec, env: TaskEnv) -> int:
        return round(spec.mask_ratio * env.global_grid**2)

    @classmethod
    def needs_for(cls, spec: Any, env: TaskEnv) -> TaskNeeds:
        return TaskNeeds(
            student_views=frozenset({MASKED}),
            token_views=frozenset({MASKED}),
            teacher_views=frozenset({GLOBAL}),
            teacher_tokens=True,
            masked_patches=cls.masked_count(spec, env),
        )

    @classmethod
    def patch_mask_sampler(cls, spec: Any, env: TaskEnv) -> Callable[..., Tensor] | None:
        return partial(draw_patch_mask, spec, env)

    @classmethod
    def problems(cls, spec: Any, env: TaskEnv) -> list[str]:
        n_patches = env.global_grid**2
        n_masked = cls.masked_count(spec, env)
        if not 0 < n_masked < n_patches:
            return [
                f"mask_ratio {spec.mask_ratio} masks {n_masked} of {n_patches} patches; "
                "need at least one masked and one visible patch"
            ]
        return []

    def select(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The `n_masked` positions per image, masked ones first, and 1/0 weights saying which of
        them are really masked (robust to masks with another count, static in shape)."""
        order = torch.argsort(mask.to(torch.uint8), dim=1, descending=True, stable=True)
        order = order[:, : self.n_masked]
        picked = torch.gather(tokens, 1, order[..., None].expand(-1, -1, tokens.shape[-1]))
        return picked, torch.gather(mask, 1, order).float()

    def teacher_targets(
        self,
        teacher: Mapping[str, EncoderOutput],
        heads: Mapping[str, nn.Module],
        batch: Batch,
        step: Tensor,
    ) -> SoftTargets:
        if batch.patch_mask is None:
            raise ValueError("the masked task needs batch.patch_mask")
        tokens, weights = self.select(teacher[GLOBAL].tokens, batch.patch_mask)
        probs, temperature = self.centred_targets(heads["head"](tokens), step, weights)
        return SoftTargets(probs=probs, temperature=temperature, weights=weights)

    def forward(self, inputs: StepInputs) -> TaskOutput:
        targets: SoftTargets = inputs.teacher[self.kind]
        assert inputs.batch.patch_mask is not None and targets["weights"] is not None
        tokens, _ = self.select(inputs.student[MASKED].tokens, inputs.batch.patch_mask)
        scores = self.head(tokens)
        with fp32(scores.device):
            loss = masked_patch_loss(
                targets["probs"], scores, targets["weights"], self.spec.student_temp
            )
        return TaskOutput(loss, {"teacher_entropy": entropy(targets["probs"]).detach()})
