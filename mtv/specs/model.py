"""Model specs: the shared ViT encoder, the text tower, the tokenizer and the EMA teacher.

A model is named by a preset (`size: B/16`); any field given next to it overrides the preset, so
`model: {size: B/16, encoder: {image_size: 256}}` is a B/16 at 256.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

from pydantic import Field, model_validator

from mtv.specs.base import PathText, StrictModel
from mtv.specs.limits import MAX_IMAGE_SIDE


class TransformerSpec(StrictModel):
    """The shape of a pre-norm transformer stack (the defaults are SigLIP B/16's)."""

    width: int = Field(768, gt=0)
    depth: int = Field(12, gt=0)
    heads: int = Field(12, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    layer_norm_eps: float = Field(1e-6, gt=0)

    @model_validator(mode="after")
    def _check_heads(self) -> TransformerSpec:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self


class EncoderSpec(TransformerSpec):
    """A SigLIP-style ViT: patch embedding, learned positions, pre-norm blocks, final norm,
    MAP pooling."""

    # The bound keeps a typo (224000) from passing validation and failing to allocate later.
    image_size: int = Field(
        224, gt=0, le=MAX_IMAGE_SIDE, description="training resolution of global views (pixels)"
    )
    patch_size: int = Field(16, gt=0)

    @model_validator(mode="after")
    def _check_patches(self) -> EncoderSpec:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        return self

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class TextSpec(TransformerSpec):
    """A bidirectional text transformer pooled at the last position (as SigLIP), then projected."""

    vocab_size: int = Field(32000, gt=0)
    context_length: int = Field(64, gt=1)


class TokenizerSpec(StrictModel):
    """An offline tokenizer: a `tokenizers` JSON file, trained from the corpus captions if
    absent."""

    path: PathText | None = Field(
        None,
        description="tokenizer.json; when null, a BPE is trained from the corpus captions and "
        "saved beside the data",
    )
    lowercase: bool = True


class TeacherSpec(StrictModel):
    """The EMA teacher used by `distill` and `masked`; it is never trained by gradient."""

    momentum: float = Field(
        0.994, ge=0.0, le=1.0, description="EMA momentum (at step 0 when scheduled; paper: 0.994)"
    )
    momentum_schedule: Literal["fixed", "cosine"] = Field(
        "fixed",
        description="fixed (the paper) or a cosine ramp from `momentum` at step 0 to "
        "`final_momentum` at the last step (DINOv2: 0.992 -> 1). A fixed m leaves m^n of the "
        "random initialisation in the teacher after n steps (0.994^200 = 0.30)",
    )
    final_momentum: float = Field(1.0, ge=0.0, le=1.0, description="end of the cosine ramp")

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The momentum of the EMA update after optimiser step `step` (0-based)."""
        if self.momentum_schedule == "fixed":
            return self.momentum
        progress = min(1.0, step / max(1, total_steps - 1))
        return self.final_momentum - (self.final_momentum - self.momentum) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )


_PRESETS: dict[str, dict[str, Any]] = {
    # A few seconds per step on a laptop CPU: what the tests build.
    "tiny": {
        "encoder": {"image_size": 32, "patch_size": 8, "width": 64, "depth": 4, "heads": 2},
        "text": {"vocab_size": 1024, "context_length": 16, "width": 64, "depth": 2, "heads": 2},
    },
    # The mini-world default: ~600 steps in ten minutes on 2 CPU cores with bf16.
    "mini": {
        "encoder": {"image_size": 64, "patch_size": 8, "width": 192, "depth": 6, "heads": 3},
        "text": {"vocab_size": 4096, "context_length": 32, "width": 192, "depth": 4, "heads": 3},
    },
    "S/16": {
        "encoder": {"image_size": 224, "patch_size": 16, "width": 384, "depth": 12, "heads": 6},
        "text": {"vocab_size": 32000, "context_length": 64, "width": 384, "depth": 12, "heads": 6},
    },
    # SigLIP B/16-224 (203.2M parameters with its text tower, as the paper's Table 1).
    "B/16": {
        "encoder": {"image_size": 224, "patch_size": 16, "width": 768, "depth": 12, "heads": 12},
        "text": {"vocab_size": 32000, "context_length": 64, "width": 768, "depth": 12, "heads": 12},
    },
    # SigLIP L/16-256.
    "L/16": {
        "encoder": {"image_size": 256, "patch_size": 16, "width": 1024, "depth": 24, "heads": 16},
        "text": {
            "vocab_size": 32000,
            "context_length": 64,
            "width": 1024,
            "depth": 24,
            "heads": 16,
        },
    },
}

ModelSize = Literal["tiny", "mini", "S/16", "B/16", "L/16"]


def model_presets() -> dict[str, dict[str, Any]]:
    """The named model sizes and the fields each one sets."""
    return copy.deepcopy(_PRESETS)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class ModelSpec(StrictModel):
    """Encoder, text tower, tokenizer and teacher. The joint image-text space has the encoder's
    width: as in SigLIP, the MAP-pooled output is the image embedding (no projection), and the
    text tower projects into it."""

    size: ModelSize | None = Field(
        None, description="a named preset; fields given beside it override the preset"
    )
    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    text: TextSpec = Field(default_factory=TextSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    init_from: PathText | None = Field(
        None,
        min_length=1,
        description="a local Hugging Face SigLIP directory (config.json + model.safetensors or "
        "pytorch_model.bin, as `save_pretrained` or `mtv export --format hf-siglip` writes) that "
        "initialises the encoder, and the text tower and vl logit scale/bias when both sides have "
        "them, before the EMA teacher copies the student; its shapes, heads, activation and "
        "LayerNorm eps must match model.encoder / model.text (a mismatch is refused, naming the "
        "tensor). Needs `pip install 'mtv[hf]'`",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and isinstance(data.get("size"), str)
            and data["size"] in _PRESETS
        ):
            return _deep_merge(_PRESETS[data["size"]], data)
        return data
