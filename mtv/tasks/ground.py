"""`ground`: CLOC-style region-text grounding. A one-layer transformer "Prompter" reads the
encoder's patch tokens before the final norm, a location embedding of each box (its two corners)
and a learnable query token; the query's output is aligned with the entity name's text embedding
by the sigmoid loss of Eq. 1, against every region name of the (global) batch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mtv.models.layers import CrossAttention, Mlp, init_weights
from mtv.runtime.distributed import all_gather_no_grad, all_gather_with_grad, rank
from mtv.tasks.base import (
    GLOBAL,
    REGION_TEXT,
    StepInputs,
    Task,
    TaskEnv,
    TaskNeeds,
    TaskOutput,
    fp32,
    register_task,
)
from mtv.tasks.sigmoid import LogitScaleBias, SigmoidLossSpec, positive_pairs, sigmoid_pair_loss


class GroundTaskSpec(SigmoidLossSpec):
    """CLOC-style region-text grounding: a one-layer Prompter over pre-norm patch tokens."""

    kind: Literal["ground"] = "ground"
    max_regions: int = Field(4, gt=0, description="region-text pairs per image (paper: 4)")
    prompter_mlp_ratio: float = Field(4.0, gt=0.0)
    box_frequencies: int = Field(
        32, gt=0, description="Fourier frequencies per box coordinate in the location embedding"
    )
    box_max_frequency: float = Field(
        64.0, gt=0.0, description="highest of them, in cycles per image (geometric spacing from 1)"
    )
    mask_identical_names: bool = Field(
        True, description="drop pairs whose entity names are equal (false negatives)"
    )

    def pair_columns(self, global_batch: int) -> int:
        return global_batch * self.max_regions


def fourier_features(coords: Tensor, n_frequencies: int, max_frequency: float) -> Tensor:
    """(..., C) coordinates in [0, 1] -> (..., 2 C n_frequencies) sin/cos features at frequencies
    spaced geometrically from 1 to `max_frequency` cycles per image."""
    exponents = torch.linspace(0.0, 1.0, n_frequencies, device=coords.device)
    frequencies = max_frequency**exponents
    angles = 2 * math.pi * coords[..., None].float() * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class Prompter(nn.Module):
    """One pre-norm transformer layer over [patch tokens; 2 corner tokens; query token], read at
    the query. Only the query's output is used, so it is computed exactly without running the
    layer for the patch positions: patch keys/values are computed once per image and shared by
    its R regions."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float,
        eps: float,
        n_frequencies: int,
        max_frequency: float,
    ):
        super().__init__()
        self.n_frequencies = n_frequencies
        self.max_frequency = max_frequency
        self.query = nn.Parameter(torch.zeros(1, 1, width))
        self.corner_proj = nn.Linear(4 * n_frequencies, width)
        self.corner_type = nn.Parameter(torch.zeros(2, width))  # top-left vs bottom-right
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = CrossAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.apply(init_weights)
        nn.init.normal_(self.query, std=0.02)
        nn.init.normal_(self.corner_type, std=0.02)

    def forward(self, patches: Tensor, boxes: Tensor) -> Tensor:
        """patches (B, N, D) pre-norm tokens; boxes (B, R, 4) xyxy in [0, 1] -> (B, R, D)."""
        batch, regions = boxes.shape[:2]
        width = patches.shape[-1]
        corners = fourier_features(
            boxes.reshape(batch, regions, 2, 2), self.n_frequencies, self.max_frequency
        )
        corners = self.corner_proj(corners.to(patches.dtype)) + self.corner_type.to(patches.dtype)
        query = self.query.to(patches.dtype).expand(batch * regions, 1, width)
        region_tokens = torch.cat([corners.reshape(batch * regions, 2, width), query], dim=1)
        patch_k, patch_v = self.attn.keys_values(self.norm1(patches))
        region_k, region_v = self.attn.keys_values(self.norm1(region_tokens))
        keys = torch.cat([patch_k.repeat_interleave(regions, dim=0), region_k], dim=2)
        values = torch.cat([patch_v.repeat_interleave(regions, dim=0), region_v], dim=2)
        x = query + self.attn.attend(self.norm1(query), keys, values)
        x = x + self.mlp(self.norm2(x))
        return x.reshape(batch, regions, width)


def region_text_loss(
    regions: Tensor,
    texts: Tensor,
    region_valid: Tensor,
    text_valid: Tensor,
    region_names: Tensor,
    text_names: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    offset: int = 0,
    mask_identical_names: bool = True,
) -> Tensor:
    """Sigmoid region-text loss over valid pairs:

        L = -(1/n) Σ_{i valid} Σ_{j valid, kept} log σ( y_ij (exp(t) o_i·t_j + b) )

    `regions` (n_local, E) and `texts` (n_all, E) are L2-normalised and flattened over images
    and regions; y_ij = +1 iff j = offset + i. Padding regions are dropped as rows and columns;
    with `mask_identical_names`, a negative pair whose names are equal is dropped (it is not a
    negative at all). n is the number of valid local regions.
    """
    logits = regions @ texts.T * logit_scale.exp() + logit_bias
    positive = positive_pairs(regions.shape[0], texts.shape[0], offset, regions.device)
    keep = region_valid[:, None] & text_valid[None, :]
    if mask_identical_names:
        keep = keep & (positive | (region_names[:, None] != text_names[None, :]))
    rows = region_valid.sum().clamp(min=1)
    return sigmoid_pair_loss(logits, positive, keep, rows)


@register_task
class GroundTask(Task):
    spec_class = GroundTaskSpec
    spec: GroundTaskSpec

    def __init__(self, spec: GroundTaskSpec, env: TaskEnv):
        super().__init__(spec, env)
        encoder = env.encoder
        self.prompter = Prompter(
            encoder.width,
            encoder.heads,
            spec.prompter_mlp_ratio,
            encoder.layer_norm_eps,
            spec.box_frequencies,
            spec.box_max_frequency,
        )
        self.logits = LogitScaleBias(spec, env.batch_size)

    @classmethod
    def needs_for(cls, spec: Any, env: TaskEnv) -> TaskNeeds:
        return TaskNeeds(
            student_views=frozenset({GLOBAL}),
            prenorm_views=frozenset({GLOBAL}),
            texts=frozenset({REGION_TEXT}),
            labels=frozenset({"boxes"}),
            regions=spec.max_regions,
        )

    def after_optimizer_step(self, step: int) -> None:
        self.logits.clamp_()

    def lr_scales(self) -> dict[str, float]:
        return self.logits.lr_scales("logits.")

    def warnings(self, logged: Mapping[str, float]) -> list[str]:
        if logged.get("regions", 1.0) == 0.0:
            return [
                "has no box in this step's batch: its loss is 0 and trains nothing (does the "
                "label store hold boxes? a tagger that names nothing, or an expert that finds "
                "nothing, leaves none)"
            ]
        return []

    def forward(self, inputs: StepInputs) -> TaskOutput:
        batch = inputs.batch
        if batch.boxes is None or batch.box_valid is None or batch.region_name_ids is None:
            raise ValueError("the ground task needs batch.boxes, box_valid and region_name_ids")
        if batch.boxes.shape[1] > self.spec.max_regions:
            raise ValueError(
                f"{batch.boxes.shape[1]} regions per image exceed max_regions "
                f"{self.spec.max_regions}"
            )
        # Padding boxes may hold anything (NaN included): give the Prompter zeros instead.
        boxes = torch.where(batch.box_valid[..., None], batch.boxes, 0.0)
        regions = self.prompter(inputs.student[GLOBAL].prenorm, boxes)
        valid = batch.box_valid.flatten()
        names = batch.region_name_ids.flatten()
        with fp32(regions.device):
            region_emb = F.normalize(regions.flatten(0, 1).float(), dim=-1)
            text_emb = F.normalize(inputs.text[REGION_TEXT].flatten(0, 1).float(), dim=-1)
            loss = region_text_loss(
                region_emb,
                all_gather_with_grad(text_emb),
                valid,
                all_gather_no_grad(valid),
                names,
                all_gather_no_grad(names),
                self.logits.scale(),
                self.logits.logit_bias,
                offset=rank() * region_emb.shape[0],
                mask_identical_names=self.spec.mask_identical_names,
            )
        return TaskOutput(loss, {**self.logits.logged(), "regions": valid.sum().detach().float()})
