"""`koleo`: the KoLeo regulariser (Sablayrolles et al. 2019, as used by DINOv2), which spreads the
L2-normalised pooled embeddings of a batch apart."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mtv.specs.tasks import TaskSpecBase
from mtv.tasks.base import (
    GLOBAL,
    StepInputs,
    Task,
    TaskEnv,
    TaskNeeds,
    TaskOutput,
    fp32,
    register_task,
)


class KoLeoTaskSpec(TaskSpecBase):
    """KoLeo regulariser on the L2-normalised pooled embeddings of the global view (fp32)."""

    kind: Literal["koleo"] = "koleo"
    weight: float = Field(0.1, ge=0.0, description="lambda_koleo (paper: 0.1)")
    eps: float = Field(1e-8, gt=0.0, description="added inside the log")


def koleo_loss(embeddings: Tensor, eps: float = 1e-8) -> Tensor:
    """L = -(1/n) Σ_i log(ρ_i + eps),  ρ_i = min_{j≠i} ||x_i - x_j||,  x = L2-normalised rows.

    Computed per rank on its own batch (as DINOv2), in fp32. `eps` also sits inside the distance,
    so identical rows give a finite loss and gradient.
    """
    x = F.normalize(embeddings.float(), dim=-1, eps=eps)
    similarity = x @ x.T
    # Exclude each row from its own neighbours: cosines are >= -1, so -2 on the diagonal is never
    # the maximum.
    similarity = similarity - 3.0 * torch.eye(x.shape[0], device=x.device, dtype=x.dtype)
    neighbour = similarity.argmax(dim=1)
    distance = F.pairwise_distance(x, x[neighbour], p=2, eps=eps)
    return -torch.log(distance + eps).mean()


@register_task
class KoLeoTask(Task):
    spec_class = KoLeoTaskSpec
    spec: KoLeoTaskSpec
    nonnegative_loss = False  # -log of a distance up to 2: as low as -log 2

    @classmethod
    def needs_for(cls, spec: Any, env: TaskEnv) -> TaskNeeds:
        return TaskNeeds(student_views=frozenset({GLOBAL}), pooled_views=frozenset({GLOBAL}))

    @classmethod
    def problems(cls, spec: Any, env: TaskEnv) -> list[str]:
        if env.batch_size < 2:
            return [f"needs at least 2 images per batch to find neighbours, got {env.batch_size}"]
        return []

    def forward(self, inputs: StepInputs) -> TaskOutput:
        pooled = inputs.student[GLOBAL].pooled
        assert pooled is not None
        if pooled.shape[0] < 2:
            raise ValueError(f"koleo needs at least 2 images per rank, got {pooled.shape[0]}")
        with fp32(pooled.device):
            loss = koleo_loss(pooled, self.spec.eps)
        return TaskOutput(loss)
