"""`depth`: relative depth from pseudo depth maps. A DPT head (Ranftl et al. 2021, in the layout of
Depth Anything V2) fuses 4 intermediate encoder layers for any patch size; the MiDaS loss (trimmed
scale-and-shift-invariant + multi-scale gradient matching) compares it with the target relative
disparity. Head and loss run in fp32 even under bf16 autocast."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

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


# ----------------------------------------------------------------------------------------- loss


def normalise_ssi(depth: Tensor, valid: Tensor, eps: float = 1e-6) -> Tensor:
    """d* = (d - t(d)) / s(d) per image, t = median and s = mean |d - t| over valid pixels.

    depth, valid: (B, H, W). Invalid pixels come out as 0. s is floored at `eps`.
    """
    flat = depth.flatten(1).float()
    mask = valid.flatten(1)
    shift = torch.nanmedian(torch.where(mask, flat, torch.nan), dim=1).values
    shift = torch.nan_to_num(shift)  # an image without valid pixels
    count = mask.sum(1).clamp(min=1)
    scale = ((flat - shift[:, None]).abs() * mask).sum(1) / count
    normalised = (flat - shift[:, None]) / scale.clamp(min=eps)[:, None]
    return (normalised * mask).view_as(depth)


def trimmed_ssi_loss(residual: Tensor, valid: Tensor, trim: float) -> Tensor:
    """Per image, (1 / 2M) Σ_{j=1..U} r_(j) over the U = floor((1 - trim) M) smallest valid
    residuals (M valid pixels), then the mean over images: the `trim` largest residuals of each
    image never contribute, whatever their size.

    residual, valid: (B, H, W) with residual = |d* - d^*|.
    """
    flat = torch.where(valid, residual, torch.inf).flatten(1)
    ordered, _ = torch.sort(flat, dim=1)
    count = valid.flatten(1).sum(1)
    keep_count = torch.floor((1.0 - trim) * count.float())
    kept = torch.arange(ordered.shape[1], device=residual.device)[None, :] < keep_count[:, None]
    kept_sum = torch.where(kept, ordered, 0.0).sum(1)
    return (kept_sum / (2 * count.clamp(min=1))).mean()


def gradient_matching_loss(difference: Tensor, valid: Tensor, scales: int) -> Tensor:
    """Σ_{k<K} per image (Σ |∇x R_k| + |∇y R_k|) / M_k, then the mean over images, with
    R = d^* - d* the normalised residual, R_k = R subsampled with stride 2^k, finite differences
    counted only where both pixels are valid and M_k the valid pixels at scale k (MiDaS).

    difference, valid: (B, H, W).
    """
    total = difference.new_zeros(difference.shape[0])
    for k in range(scales):
        step = 2**k
        residual = difference[:, ::step, ::step]
        mask = valid[:, ::step, ::step].to(residual.dtype)
        residual = residual * mask
        grad_x = (residual[:, :, 1:] - residual[:, :, :-1]).abs() * mask[:, :, 1:] * mask[:, :, :-1]
        grad_y = (residual[:, 1:] - residual[:, :-1]).abs() * mask[:, 1:] * mask[:, :-1]
        count = mask.flatten(1).sum(1).clamp(min=1)
        total = total + (grad_x.flatten(1).sum(1) + grad_y.flatten(1).sum(1)) / count
    return total.mean()


def depth_ssi_trimmed_loss(
    prediction: Tensor,
    target: Tensor,
    valid: Tensor,
    trim: float = 0.1,
    scales: int = 4,
    gradient_weight: float = 2.0,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """MiDaS loss as in MTV (appendix A.2): L = L_ssitrim + gradient_weight * L_gm, both on the
    per-image median/MAD-normalised prediction and target. Returns (L_ssitrim, L_gm).

    prediction, target: (B, H, W) relative disparity; valid: (B, H, W) bool.
    """
    pred_n = normalise_ssi(prediction, valid, eps)
    target_n = normalise_ssi(target, valid, eps)
    difference = pred_n - target_n
    ssi = trimmed_ssi_loss(difference.abs(), valid, trim)
    gm = gradient_matching_loss(difference, valid, scales) if gradient_weight > 0 else ssi * 0
    return ssi, gm


# ----------------------------------------------------------------------------------------- head


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """RefineNet fusion: add the (refined) skip features, refine, upsample, 1x1 conv."""

    def __init__(self, features: int, with_skip: bool):
        super().__init__()
        # The deepest block has no skip input: building its unit anyway would leave parameters
        # without gradients (a DDP error) and inflate the count.
        self.skip_unit = ResidualConvUnit(features) if with_skip else None
        self.unit = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        if skip is not None and self.skip_unit is not None:
            x = x + self.skip_unit(skip)
        x = F.interpolate(self.unit(x), size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Reassemble 4 token maps at 4x, 2x, 1x and 1/2x the patch grid, fuse them coarse to fine,
    and predict one channel at the input resolution. Any patch size: the output is interpolated
    to the image size rather than to grid x 14 as in the public head."""

    def __init__(self, width: int, features: int, out_channels: tuple[int, int, int, int]):
        super().__init__()
        self.projects = nn.ModuleList(nn.Conv2d(width, c, 1) for c in out_channels)
        c0, c1, _, c3 = out_channels
        self.resize = nn.ModuleList(
            [
                nn.ConvTranspose2d(c0, c0, 4, stride=4),
                nn.ConvTranspose2d(c1, c1, 2, stride=2),
                nn.Identity(),
                nn.Conv2d(c3, c3, 3, stride=2, padding=1),
            ]
        )
        self.layer_rn = nn.ModuleList(
            nn.Conv2d(c, features, 3, padding=1, bias=False) for c in out_channels
        )
        self.fusion = nn.ModuleList(FusionBlock(features, with_skip=i < 3) for i in range(4))
        self.out_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.out_conv2 = nn.Conv2d(features // 2, 32, 3, padding=1)
        # No final ReLU (the public head has one): the loss is shift-invariant, so a sign
        # constraint only adds dead outputs.
        self.out_conv3 = nn.Conv2d(32, 1, 1)

    def forward(self, layers: list[Tensor], grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
        """layers: 4 x (B, N, D) token maps, shallow to deep -> (B, 1, *size)."""
        rows, cols = grid
        maps = []
        for tokens, project, resize, rn in zip(
            layers, self.projects, self.resize, self.layer_rn, strict=True
        ):
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, rows, cols)
            maps.append(rn(resize(project(x))))
        x = self.fusion[3](maps[3], None, maps[2].shape[-2:])
        x = self.fusion[2](x, maps[2], maps[1].shape[-2:])
        x = self.fusion[1](x, maps[1], maps[0].shape[-2:])
        x = self.fusion[0](x, maps[0], (2 * maps[0].shape[-2], 2 * maps[0].shape[-1]))
        x = F.interpolate(self.out_conv1(x), size=size, mode="bilinear", align_corners=True)
        return self.out_conv3(F.relu(self.out_conv2(x)))


def default_depth_layers(depth: int) -> list[int]:
    """4 evenly spaced 1-based layers ending at the last: {3,6,9,12} of 12, {6,12,18,24} of 24
    (quarters rounded up: {2,3,5,6} of 6)."""
    return [math.ceil(depth * i / 4) for i in range(1, 5)]


def default_features(width: int) -> int:
    """DPT fusion width: width / 6 on a multiple of 8, at least 16 (128 at B/16)."""
    return max(16, (width // 6) // 8 * 8)


@register_task
class DepthTask(Task):
    spec_class = DepthTaskSpec
    spec: DepthTaskSpec

    def __init__(self, spec: DepthTaskSpec, env: TaskEnv):
        super().__init__(spec, env)
        width = env.encoder.width
        self.layers = self.tapped_layers(spec, env)
        self.head = DPTHead(
            width,
            spec.features or default_features(width),
            (width // 8, width // 4, width // 2, width),
        )

    @staticmethod
    def tapped_layers(spec: DepthTaskSpec, env: TaskEnv) -> list[int]:
        return spec.layers or default_depth_layers(env.encoder.depth)

    @classmethod
    def needs_for(cls, spec: Any, env: TaskEnv) -> TaskNeeds:
        return TaskNeeds(
            student_views=frozenset({GLOBAL}),
            layers=tuple(cls.tapped_layers(spec, env)),
            labels=frozenset({"depth"}),
        )

    @classmethod
    def problems(cls, spec: Any, env: TaskEnv) -> list[str]:
        depth = env.encoder.depth
        layers = cls.tapped_layers(spec, env)
        bad = [layer for layer in layers if not 1 <= layer <= depth]
        if bad:
            return [f"layers {bad} are outside the encoder's 1..{depth}"]
        if len(set(layers)) != 4:
            return [f"layers {layers} must be 4 distinct layers"]
        return []

    def depth_layers(self) -> tuple[int, ...]:
        return tuple(self.layers)

    def predict_depth(
        self, layers: Mapping[int, Tensor], grid: tuple[int, int], size: tuple[int, int]
    ) -> Tensor:
        """(B, 1, *size) relative disparity, computed in fp32 whatever the autocast state
        (`PredictsDepth`)."""
        device = next(iter(layers.values())).device
        with fp32(device):
            return self.head([layers[i].float() for i in self.layers], grid, size)

    def forward(self, inputs: StepInputs) -> TaskOutput:
        batch = inputs.batch
        if batch.depth is None:
            raise ValueError("the depth task needs batch.depth")
        out = inputs.student[GLOBAL]
        prediction = self.predict_depth(out.layers, out.grid, tuple(batch.depth.shape[-2:]))
        valid = batch.depth_valid if batch.depth_valid is not None else torch.isfinite(batch.depth)
        with fp32(prediction.device):
            ssi, gm = depth_ssi_trimmed_loss(
                prediction[:, 0],
                torch.nan_to_num(batch.depth[:, 0].float()),
                valid[:, 0],
                self.spec.trim_fraction,
                self.spec.gradient_scales,
                self.spec.gradient_weight,
                self.spec.scale_eps,
            )
            loss = ssi + self.spec.gradient_weight * gm
        return TaskOutput(loss, {"ssi": ssi.detach(), "gradient": gm.detach()})
