"""`distill`: DINO local-to-global self-distillation. The student sees M local crops, the EMA
teacher the global crop; both project with a DINO head (separate from iBOT's)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field
from torch import Tensor, nn

from mtv.data.batch import Batch
from mtv.models.vit import EncoderOutput
from mtv.tasks.base import (
    GLOBAL,
    LOCAL,
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


class DistillTaskSpec(SSLHeadSpec):
    """DINO local-to-global self-distillation: student on local crops, teacher on the global
    crop."""

    kind: Literal["distill"] = "distill"
    n_local_crops: int = Field(6, gt=0, description="M, local crops per image")
    token: Literal["pooled", "mean_patch"] = Field(
        "pooled",
        description="which image embedding feeds the DINO head: the MAP-pooled embedding "
        "(SigLIP has no CLS token) or the mean of the final patch tokens",
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
class DistillTask(SelfDistillationTask):
    spec_class = DistillTaskSpec
    spec: DistillTaskSpec

    @classmethod
    def needs_for(cls, spec: Any, env: TaskEnv) -> TaskNeeds:
        pooled = spec.token == "pooled"
        return TaskNeeds(
            student_views=frozenset({LOCAL}),
            pooled_views=frozenset({LOCAL}) if pooled else frozenset(),
            token_views=frozenset() if pooled else frozenset({LOCAL}),
            teacher_views=frozenset({GLOBAL}),
            teacher_pooled=pooled,
            teacher_tokens=not pooled,
            local_crops=spec.n_local_crops,
        )

    @classmethod
    def problems(cls, spec: Any, env: TaskEnv) -> list[str]:
        if env.local_size % env.encoder.patch_size:
            return [
                f"local crops of {env.local_size} px are not a multiple of the patch size "
                f"{env.encoder.patch_size} (set data.views.local_size)"
            ]
        return []

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
    ) -> SoftTargets:
        probs, temperature = self.centred_targets(
            heads["head"](self.embedding(teacher[GLOBAL])), step
        )
        return SoftTargets(probs=probs, temperature=temperature, weights=None)

    def forward(self, inputs: StepInputs) -> TaskOutput:
        targets: SoftTargets = inputs.teacher[self.kind]
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
