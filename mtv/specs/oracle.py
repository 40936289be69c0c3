"""The mini-world oracle experts' settings: exact ground truth, optionally degraded by a seeded
noise model, so that label quality can be studied. Used by labelling specs and, for mini-world
sources labelled on first use, by experiment specs (`data.labels.oracle`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mtv.specs.base import StrictModel


class OracleDepthSpec(StrictModel):
    """Mini-world ground truth as relative disparity, optionally degraded to study label quality."""

    kind: Literal["oracle"] = "oracle"
    blur_sigma: float = Field(0.0, ge=0.0, description="Gaussian blur, in label pixels")
    noise: float = Field(0.0, ge=0.0, description="multiplicative Gaussian noise (std)")
    warp: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="random misregistration: shift and scale up to this fraction of the image",
    )


class OracleBoxesSpec(StrictModel):
    """Mini-world ground-truth boxes and names, optionally degraded."""

    kind: Literal["oracle"] = "oracle"
    jitter: float = Field(0.0, ge=0.0, description="coordinate noise, as a fraction of box size")
    miss_rate: float = Field(0.0, ge=0.0, le=1.0, description="probability a box is dropped")
    false_rate: float = Field(0.0, ge=0.0, description="mean number of spurious boxes per image")
    wrong_name_rate: float = Field(0.0, ge=0.0, le=1.0, description="probability a name is wrong")
