"""`distill`: DINO local-to-global self-distillation. The student sees M local crops, the EMA
teacher the global crop; both project with a DINO head (separate from iBOT's)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from mtv.batch import Batch
from mtv.models.vit import EncoderOutput
from mtv.specs.tasks import DistillTaskSpec
from mtv.tasks.base import (
    GLOBAL,
    LOCAL,
    StepInputs,
    Task,
    TaskEnv,
    TaskNeeds,
    TaskOutput,
    fp32,
    register_task,
)
from mtv.tasks.ssl_heads import (
    Centering,
    DINOHead,
    distillation_cross_entropy,
    entropy,
    teacher_probabilities,
    teacher_temperature,
)


def local_to_global_loss(
    teacher_probs: Tensor, student_scores: Tensor, student_temp: float
) -> Tensor:
    """L = (1/BM) Σ_i Σ_m H(P_t(i), softmax(p_s(i, m) / tau_s)), averaged rather than summed
    (as DINO) so the loss scale does not grow with batch and crop count.

    `teacher_probs` (B, K) are the centred, sharpened teacher probabilities of the global crops;
    `student_scores` (B, M, K) the student's scores of the M local crops of each image.
    """
    return distillation_cross_entropy(teacher_probs[:, None], student_scores, student_temp).mean()


@register_task
class DistillTask(Task):
    kind = "distill"
    spec: DistillTaskSpec

    def __init__(self, spec: DistillTaskSpec, env: TaskEnv):
        super().__init__(spec, env)
        self.head = DINOHead(
            env.encoder.width, spec.hidden_dim, spec.bottleneck_dim, spec.n_prototypes
        )
        self.centering = Centering(spec.n_prototypes, spec.center_momentum)

    @classmethod
    def needs_for(cls, spec: Any, env: TaskEnv) -> TaskNeeds:
        pooled = spec.token == "pooled"
        return TaskNeeds(
            student_views=frozenset({LOCAL}),
            pooled_views=frozenset({LOCAL}) if pooled else frozenset(),
            token_views=frozenset() if pooled else frozenset({LOCAL}),
            teacher_views=frozenset({GLOBAL}),
            teacher_pooled=pooled,
        )

    @classmethod
    def problems(cls, spec: Any, env: TaskEnv) -> list[str]:
        if env.local_size % env.encoder.patch_size:
            return [
                f"local crops of {env.local_size} px are not a multiple of the patch size "
                f"{env.encoder.patch_size} (set data.views.local_size)"
            ]
        return []

    def ema_modules(self) -> dict[str, nn.Module]:
        return {"head": self.head}

    def embedding(self, out: EncoderOutput) -> Tensor:
        if self.spec.token == "pooled":
            assert out.pooled is not None
            return out.pooled
        return out.tokens.mean(dim=1)

    def teacher_targets(
        self,
        teacher: Mapping[str, EncoderOutput],
        heads: Mapping[str, nn.Module],
        batch: Batch,
        step: Tensor,
    ) -> dict[str, Tensor]:
        scores = heads["head"](self.embedding(teacher[GLOBAL]))
        temperature = teacher_temperature(self.spec, step, self.env.steps)
        with fp32(scores.device):
            probs = teacher_probabilities(scores, self.centering.center, temperature)
            self.centering.update(scores)
        return {"probs": probs, "temperature": temperature}

    def forward(self, inputs: StepInputs) -> TaskOutput:
        targets = inputs.teacher[self.kind]
        probs = targets["probs"]
        scores = self.head(self.embedding(inputs.student[LOCAL]))
        with fp32(scores.device):
            loss = local_to_global_loss(
                probs, scores.view(probs.shape[0], -1, scores.shape[-1]), self.spec.student_temp
            )
        return TaskOutput(
            loss,
            {
                "teacher_entropy": entropy(probs).detach(),
                "teacher_temp": targets["temperature"].detach(),
            },
        )
