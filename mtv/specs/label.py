"""The spec of a labelling job (`mtv label SPEC.yaml`): source, experts, store, batching."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mtv.specs.base import PathText, StrictModel
from mtv.specs.experiment import MiniWorldSourceSpec, SourceSpec
from mtv.specs.limits import DEFAULT_MAX_PIXELS, MAX_IMAGE_SIDE
from mtv.specs.oracle import OracleBoxesSpec, OracleDepthSpec


class DepthAnythingSpec(StrictModel):
    """Depth Anything V2 through transformers, from a local directory or the HF cache."""

    kind: Literal["depth_anything"] = "depth_anything"
    model: str = Field(
        description="local directory or cached id, e.g. depth-anything/Depth-Anything-V2-Large-hf"
    )
    device: str = "cpu"


class OwlV2Spec(StrictModel):
    """OWLv2 open-vocabulary detection through transformers, queried with the tagger's names."""

    kind: Literal["owlv2"] = "owlv2"
    model: str = Field(description="local directory or cached id, e.g. google/owlv2-base-patch16")
    threshold: float = Field(0.1, ge=0.0, le=1.0)
    max_boxes: int = Field(16, gt=0)
    device: str = "cpu"


class CaptionTaggerSpec(StrictModel):
    """Entity names = the noun phrases of the caption (RAM++ is not in transformers)."""

    kind: Literal["caption"] = "caption"


class SiglipTaggerSpec(StrictModel):
    """Entity names = the tags of a vocabulary that a SigLIP-format model (e.g. an `mtv export`)
    finds in the image, zero-shot, by its sigmoid image-text probability."""

    kind: Literal["siglip"] = "siglip"
    model: PathText = Field(description="a local SigLIP directory (config, weights, processor)")
    vocabulary: PathText = Field(description="a text file of tags, one a line")
    threshold: float = Field(0.3, ge=0.0, le=1.0, description="least sigmoid probability kept")
    max_tags: int = Field(8, gt=0)
    template: str = Field("a photo of a {}.", description="the prompt each tag fills")
    device: str = "cpu"


TaggerSpec = Annotated[CaptionTaggerSpec | SiglipTaggerSpec, Field(discriminator="kind")]


DepthExpertSpec = Annotated[OracleDepthSpec | DepthAnythingSpec, Field(discriminator="kind")]
BoxExpertSpec = Annotated[OracleBoxesSpec | OwlV2Spec, Field(discriminator="kind")]


class LabelSpec(StrictModel):
    """One labelling job. Oracle experts need a mini-world source (its ground truth)."""

    source: SourceSpec = Field(default_factory=MiniWorldSourceSpec)
    output: PathText = Field(description="the Zarr label store to write (resumed if it exists)")
    depth: DepthExpertSpec | None = Field(default_factory=OracleDepthSpec)
    boxes: BoxExpertSpec | None = Field(default_factory=OracleBoxesSpec)
    tagger: TaggerSpec = Field(default_factory=CaptionTaggerSpec)
    resolution: int = Field(
        64, gt=0, le=MAX_IMAGE_SIDE, description="side of the stored depth maps"
    )
    batch_size: int = Field(32, gt=0, description="images per expert call")
    chunk_size: int = Field(256, gt=0, description="images per store chunk (the resume unit)")
    seed: int = Field(0, description="seed of the oracle's noise")
    relabel_changed: bool = Field(
        False,
        description="samples whose content changed since the store labelled them (same key, "
        "other bytes) are labelled again, with their chunks, instead of the store being "
        "refused; the store records each relabelling (`relabelled` in its attributes)",
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        gt=0,
        description="an image with more pixels is recorded as undecodable, not decoded",
    )
