"""`vl`: sigmoid image-caption contrast (SigLIP; paper Eq. 1)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtv.distributed import all_gather_with_grad, rank
from mtv.specs.tasks import VLTaskSpec
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


def positive_pairs(rows: int, cols: int, offset: int, device: torch.device) -> Tensor:
    """(rows, cols) bool: True at (i, offset + i), the matched pairs of this rank's rows among
    the columns gathered from every rank."""
    return torch.arange(cols, device=device)[None, :] == (
        torch.arange(rows, device=device)[:, None] + offset
    )


def sigmoid_pair_loss(
    logits: Tensor, positive: Tensor, keep: Tensor | None, rows: Tensor | float
) -> Tensor:
    """-(1/rows) Σ_ij keep_ij log σ(y_ij z_ij), with y = +1 on positives and -1 elsewhere."""
    signs = positive.to(logits.dtype) * 2 - 1
    terms = F.logsigmoid(signs * logits)
    if keep is not None:
        terms = terms * keep
    return -terms.sum() / rows


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


class LogitScaleBias(nn.Module):
    """Learnable t (used as exp(t), clamped) and b of a sigmoid loss."""

    def __init__(self, scale_init: float, bias_init: float, scale_max: float):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.logit_bias = nn.Parameter(torch.tensor(float(bias_init)))
        self.scale_max = scale_max

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(max=self.scale_max)

    def report(self, prefix: str = "") -> dict[str, Tensor]:
        return {
            f"{prefix}logit_scale": self.scale().detach().exp(),
            f"{prefix}logit_bias": self.logit_bias.detach(),
        }


@register_task
class VLTask(Task):
    kind = "vl"
    spec: VLTaskSpec

    def __init__(self, spec: VLTaskSpec, env: TaskEnv):
        super().__init__(spec, env)
        self.logits = LogitScaleBias(
            spec.logit_scale_init, spec.logit_bias_init, spec.logit_scale_max
        )

    @classmethod
    def needs_for(cls, spec: Any, env: TaskEnv) -> TaskNeeds:
        return TaskNeeds(
            student_views=frozenset({GLOBAL}),
            pooled_views=frozenset({GLOBAL}),
            texts=frozenset({CAPTION_TEXT}),
            labels=frozenset({"caption"}),
        )

    def forward(self, inputs: StepInputs) -> TaskOutput:
        pooled = inputs.student[GLOBAL].pooled
        assert pooled is not None
        with fp32(pooled.device):
            image = F.normalize(pooled.float(), dim=-1)
            text = all_gather_with_grad(F.normalize(inputs.text[CAPTION_TEXT].float(), dim=-1))
            loss = siglip_loss(
                image, text, self.logits.scale(), self.logits.logit_bias, rank() * image.shape[0]
            )
        return TaskOutput(loss, self.logits.report())
