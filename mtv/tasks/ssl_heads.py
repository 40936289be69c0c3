"""Parts shared by the two self-distillation tasks (`distill`, `masked`): the DINO projection head,
the all-reduced centering buffer, the teacher-temperature warm-up and the cross-entropy."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypedDict

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mtv.models.layers import init_weights
from mtv.runtime.distributed import all_reduce_sum
from mtv.specs.tasks import TaskSpecBase
from mtv.tasks.base import Task, TaskEnv, fp32


class SSLHeadSpec(TaskSpecBase):
    """Fields shared by the two self-distillation heads (DINO and iBOT; separate parameters)."""

    n_prototypes: int = Field(32768, gt=1, description="K, the prototype count (paper: 32k)")
    hidden_dim: int = Field(2048, gt=0, description="width of the 3-layer MLP")
    bottleneck_dim: int = Field(256, gt=0, description="L2-normalised bottleneck width")
    student_temp: float = Field(0.1, gt=0.0)
    teacher_temp: float = Field(0.07, gt=0.0, description="teacher temperature after warm-up")
    teacher_temp_start: float = Field(0.04, gt=0.0, description="teacher temperature at step 0")
    teacher_temp_warmup_fraction: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="fraction of schedule.steps over which the teacher temperature rises linearly "
        "(paper: unspecified; DINOv2 uses 30 of 100 epochs)",
    )
    center_momentum: float = Field(0.9, ge=0.0, lt=1.0)
    freeze_prototypes_steps: int = Field(
        0,
        ge=0,
        description="the prototype layer gets no update during the first N optimiser steps "
        "(paper: unspecified; DINOv2 freezes it for the first epoch), so the prototypes do not "
        "chase the random features of a fresh encoder",
    )


class DINOHead(nn.Module):
    """3-layer MLP -> L2-normalised bottleneck -> weight-normalised prototype layer (norm fixed to
    1, as DINO's `norm_last_layer`), giving cosine scores against K prototypes."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, n_prototypes: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.prototypes = nn.Parameter(torch.empty(n_prototypes, bottleneck_dim))
        self.apply(init_weights)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        z = self.mlp(x)
        # The prototype layer runs in fp32: the scores are divided by temperatures down to 0.04,
        # which would amplify bf16 rounding of the cosines ~25x.
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            return z @ F.normalize(self.prototypes.float(), dim=-1).T


class Centering(nn.Module):
    """EMA of the teacher's scores, averaged over all ranks:
    c <- m c + (1 - m) (Σ_ranks Σ_rows w_r s_r) / (Σ_ranks Σ_rows w_r)."""

    center: Tensor

    def __init__(self, n_prototypes: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, n_prototypes))

    @torch.no_grad()
    def update(self, scores: Tensor, weights: Tensor | None = None) -> None:
        scores = scores.float()
        weights = torch.ones(scores.shape[0], device=scores.device) if weights is None else weights
        total = (scores * weights.float()[:, None]).sum(0)
        # One all-reduce for sum and count together.
        stats = all_reduce_sum(torch.cat([total, weights.float().sum()[None]]))
        batch_center = stats[:-1] / stats[-1].clamp(min=1.0)
        self.center.mul_(self.momentum).add_(batch_center[None], alpha=1.0 - self.momentum)


def teacher_temperature(spec: SSLHeadSpec, step: Tensor, total_steps: int) -> Tensor:
    """Linear warm-up from `teacher_temp_start` to `teacher_temp` over the first
    `teacher_temp_warmup_fraction * total_steps` steps, constant after."""
    warmup = round(spec.teacher_temp_warmup_fraction * total_steps)
    if warmup <= 0:
        return torch.full_like(step, spec.teacher_temp, dtype=torch.float32)
    progress = (step.float() / warmup).clamp(0.0, 1.0)
    return spec.teacher_temp_start + (spec.teacher_temp - spec.teacher_temp_start) * progress


def teacher_probabilities(scores: Tensor, center: Tensor, temperature: Tensor) -> Tensor:
    """softmax((p_t - c) / tau_t), in fp32."""
    return F.softmax((scores.float() - center) / temperature, dim=-1)


def distillation_cross_entropy(
    teacher_probs: Tensor, student_scores: Tensor, student_temp: float
) -> Tensor:
    """Per-row H(P_t, P_s) = -Σ_k P_t,k log softmax(p_s / tau_s)_k. It differs from the paper's
    KL(P_t || P_s) only by the teacher's entropy, a constant for the student: same gradients."""
    log_student = F.log_softmax(student_scores.float() / student_temp, dim=-1)
    return -(teacher_probs * log_student).sum(-1)


def entropy(probs: Tensor) -> Tensor:
    """Mean entropy of rows of probabilities (nats); ln K = uniform collapse, 0 = one-hot."""
    return torch.special.entr(probs).sum(-1).mean()


class SoftTargets(TypedDict):
    """What the teacher gives a self-distillation task each step."""

    probs: Tensor  # centred, sharpened teacher probabilities (fp32), rows as the student's
    temperature: Tensor  # 0-d: the teacher temperature at this step
    weights: Tensor | None  # per-row 1/0 (masked patches really masked); None = all rows count


class SelfDistillationTask(Task):
    """Base of `distill` and `masked`: each owns a DINO head and a centering buffer (the paper
    keeps the two heads separate), and the EMA teacher keeps a copy of the head."""

    spec: SSLHeadSpec

    def __init__(self, spec: SSLHeadSpec, env: TaskEnv):
        super().__init__(spec, env)
        self.head = DINOHead(
            env.encoder.width, spec.hidden_dim, spec.bottleneck_dim, spec.n_prototypes
        )
        self.centering = Centering(spec.n_prototypes, spec.center_momentum)

    def ema_modules(self) -> dict[str, nn.Module]:
        return {"head": self.head}

    def before_optimizer_step(self, step: int) -> None:
        # No gradient, no update: the fused AdamW skips parameters whose grad is None.
        if step < self.spec.freeze_prototypes_steps:
            self.head.prototypes.grad = None

    def warnings(self, logged: Mapping[str, float]) -> list[str]:
        entropy = logged.get("teacher_entropy")
        if entropy is None:
            return []
        uniform = math.log(self.spec.n_prototypes)
        if entropy > 0.98 * uniform:
            return [
                f"teacher entropy {entropy:.3f} is near ln K = {uniform:.3f} (uniform collapse)"
            ]
        if entropy < 0.05:
            return [f"teacher entropy {entropy:.4f} is near 0 (one-hot collapse)"]
        return []

    def centred_targets(
        self, scores: Tensor, step: Tensor, weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Teacher probabilities softmax((s - c) / tau_t(step)) with the current center, then the
        center update from these scores (weighted rows, all ranks). Returns (probs, tau_t)."""
        temperature = teacher_temperature(self.spec, step, self.env.steps)
        with fp32(scores.device):
            probs = teacher_probabilities(scores, self.centering.center, temperature)
            self.centering.update(
                scores.reshape(-1, scores.shape[-1]),
                None if weights is None else weights.reshape(-1),
            )
        return probs, temperature
