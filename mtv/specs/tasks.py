"""Task specs: one class per task kind, joined in a union discriminated by `kind`.

Every default is the paper's value (Sec. 4, 5.1 and appendix A.2); where the paper is silent the
choice is named in the field's description. Adding a task = one class here + one file in
`mtv/tasks/`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from mtv.specs.base import StrictModel


class TaskSpecBase(StrictModel):
    weight: float = Field(1.0, ge=0.0, description="multiplier of this task's loss in the total")


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


class VLTaskSpec(SigmoidLossSpec):
    """Sigmoid image-caption contrast (SigLIP, Eq. 1)."""

    kind: Literal["vl"] = "vl"


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


class KoLeoTaskSpec(TaskSpecBase):
    """KoLeo regulariser on the L2-normalised pooled embeddings of the global view (fp32)."""

    kind: Literal["koleo"] = "koleo"
    weight: float = Field(0.1, ge=0.0, description="lambda_koleo (paper: 0.1)")
    eps: float = Field(1e-8, gt=0.0, description="added inside the log")


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


class DepthTaskSpec(TaskSpecBase):
    """Relative depth from pseudo-labels: DPT head + MiDaS trimmed SSI and gradient-matching
    loss."""

    kind: Literal["depth"] = "depth"
    layers: list[int] | None = Field(
        None,
        description="1-based encoder layers tapped by the DPT head; default: 4 evenly spaced, "
        "ending at the last ({3,6,9,12} for 12 layers, {6,12,18,24} for 24)",
    )
    features: int | None = Field(
        None,
        description="DPT fusion width; default width/6 rounded down to a multiple of 8 (128 at "
        "B/16, as Depth Anything V2-B; 168 at L/16, where DA2-L uses 256)",
    )
    trim_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="largest residuals dropped")
    gradient_scales: int = Field(4, gt=0, description="K, scales of the gradient-matching loss")
    gradient_weight: float = Field(2.0, ge=0.0, description="weight of the gradient-matching loss")
    scale_eps: float = Field(1e-6, gt=0.0, description="floor of the per-image scale s(d)")

    @model_validator(mode="after")
    def _check_layers(self) -> DepthTaskSpec:
        if self.layers is not None and len(self.layers) != 4:
            raise ValueError(f"the DPT head taps exactly 4 layers, got {self.layers}")
        return self


TaskSpec = Annotated[
    VLTaskSpec | DistillTaskSpec | MaskedTaskSpec | KoLeoTaskSpec | GroundTaskSpec | DepthTaskSpec,
    Field(discriminator="kind"),
]


def task_spec_classes() -> dict[str, type[TaskSpecBase]]:
    """Task kind -> its spec class, read off the `TaskSpec` union."""
    union = get_args(TaskSpec)[0]
    return {cls.model_fields["kind"].default: cls for cls in get_args(union)}


TaskKind = Literal["vl", "distill", "masked", "koleo", "ground", "depth"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
