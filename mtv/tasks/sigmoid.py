"""Pieces of the sigmoid pair loss (SigLIP) shared by `vl` (image-caption) and `ground`
(region-name): pair labels across ranks, the masked loss sum, and the learnable scale and bias."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mtv.specs.tasks import TaskSpecBase


class SigmoidLossSpec(TaskSpecBase):
    """The learnable scale and bias of a sigmoid pair loss (SigLIP's initialisation)."""

    logit_scale_init: float = Field(math.log(10.0), description="t, used as exp(t) (paper: log 10)")
    logit_bias_init: float | Literal["batch"] = Field(
        -10.0,
        description="b at step 0 (paper: -10, chosen for 16k-32k batches). 'batch': -ln(n - 1), "
        "n = columns of the pair matrix (the global batch for vl; global batch x max_regions for "
        "ground), the bias at which the initial loss matches the share of positive pairs",
    )
    logit_scale_max: float = Field(
        math.log(100.0), description="exp(t) is clamped to at most exp(logit_scale_max)"
    )
    logit_lr_scale: float = Field(
        1.0,
        gt=0.0,
        description="learning-rate multiplier of t and b (paper: 1). Short runs at lr 5e-4 cannot "
        "move them far from their initialisation; a larger rate for these two scalars can",
    )

    def pair_columns(self, global_batch: int) -> int:
        """Columns of this loss's pair matrix for a global batch (the negatives per row + 1)."""
        return global_batch

    def resolved_bias_init(self, global_batch: int) -> float:
        """The bias at step 0: the number given, or -ln(n - 1) for 'batch'."""
        if self.logit_bias_init == "batch":
            return -math.log(max(self.pair_columns(global_batch) - 1, 1))
        return float(self.logit_bias_init)


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
        # `where`, not a product: a dropped pair may hold NaN (e.g. a padding row), and NaN * 0
        # is NaN.
        terms = torch.where(keep, terms, 0.0)
    return -terms.sum() / rows


class LogitScaleBias(nn.Module):
    """Learnable t (used as exp(t), clamped) and b of a sigmoid loss. `global_batch` sizes a
    batch-aware bias initialisation (`logit_bias_init: batch`)."""

    def __init__(self, spec: SigmoidLossSpec, global_batch: int):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(spec.logit_scale_init)))
        self.logit_bias = nn.Parameter(torch.tensor(spec.resolved_bias_init(global_batch)))
        self.scale_max = spec.logit_scale_max
        self.lr_scale = spec.logit_lr_scale

    def lr_scales(self, prefix: str = "") -> dict[str, float]:
        """Learning-rate multipliers of t and b, by parameter name under `prefix`."""
        if self.lr_scale == 1.0:
            return {}
        return {f"{prefix}logit_scale": self.lr_scale, f"{prefix}logit_bias": self.lr_scale}

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(max=self.scale_max)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep t <= max after an optimiser step. The clamp in `scale()` alone would leave t
        stuck above the bound, where it gets no gradient (as open_clip clamps after the step)."""
        self.logit_scale.clamp_(max=self.scale_max)

    def logged(self, prefix: str = "") -> dict[str, Tensor]:
        return {
            f"{prefix}logit_scale": self.scale().detach().exp(),
            f"{prefix}logit_bias": self.logit_bias.detach(),
        }
