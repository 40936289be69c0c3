"""`vl`: sigmoid image-caption contrast (SigLIP; paper Eq. 1)."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor

from mtv.runtime.distributed import all_gather_with_grad, rank
from mtv.tasks.base import (
    CAPTION_TEXT,
    GLOBAL,
    StepInputs,
    Task,
    TaskEnv,
    TaskNeeds,
    TaskOutput,
    fp32,
    register_task,
)
from mtv.tasks.sigmoid import LogitScaleBias, SigmoidLossSpec, positive_pairs, sigmoid_pair_loss


class VLTaskSpec(SigmoidLossSpec):
    """Sigmoid image-caption contrast (SigLIP, Eq. 1)."""

    kind: Literal["vl"] = "vl"


def siglip_loss(
    image: Tensor, text: Tensor, logit_scale: Tensor, logit_bias: Tensor, offset: int = 0
) -> Tensor:
    """Sigmoid contrastive loss (Zhai et al. 2023; MTV Eq. 1):

        L = -(1/B) Σ_{i=1..B} Σ_j log σ( y_ij (exp(t) v_i·t_j + b) ),  y_ij = +1 iff j = offset + i

    `image` (B, E) are this rank's L2-normalised image embeddings, `text` (B_all, E) the
    L2-normalised caption embeddings of all ranks; `offset` is where this rank's captions start.
    """
    logits = image @ text.T * logit_scale.exp() + logit_bias
    positive = positive_pairs(image.shape[0], text.shape[0], offset, image.device)
    return sigmoid_pair_loss(logits, positive, None, image.shape[0])


@register_task
class VLTask(Task):
    spec_class = VLTaskSpec
    spec: VLTaskSpec

    def __init__(self, spec: VLTaskSpec, env: TaskEnv):
        super().__init__(spec, env)
        self.logits = LogitScaleBias(spec, env.batch_size)

    @classmethod
    def needs_for(cls, spec: Any, env: TaskEnv) -> TaskNeeds:
        return TaskNeeds(
            student_views=frozenset({GLOBAL}),
            pooled_views=frozenset({GLOBAL}),
            texts=frozenset({CAPTION_TEXT}),
            labels=frozenset({"caption"}),
        )

    def image_text_logits(self) -> LogitScaleBias:
        """`ScoresImageText`: SigLIP's t and b, for export and SigLIP loading."""
        return self.logits

    def after_optimizer_step(self, step: int) -> None:
        self.logits.clamp_()

    def lr_scales(self) -> dict[str, float]:
        return self.logits.lr_scales("logits.")

    def forward(self, inputs: StepInputs) -> TaskOutput:
        pooled = inputs.student[GLOBAL].pooled
        assert pooled is not None
        with fp32(pooled.device):
            image = F.normalize(pooled.float(), dim=-1)
            text = all_gather_with_grad(F.normalize(inputs.text[CAPTION_TEXT].float(), dim=-1))
            loss = siglip_loss(
                image, text, self.logits.scale(), self.logits.logit_bias, rank() * image.shape[0]
            )
        return TaskOutput(loss, self.logits.logged())
