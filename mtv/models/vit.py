"""The shared image encoder: a SigLIP-style ViT with a mask token and intermediate-layer taps."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtv.models.layers import AttentionPool, Block, init_weights
from mtv.specs.model import EncoderSpec


@dataclass
class EncoderOutput:
    """What one encoder pass yields; tasks take the parts they declared they need."""

    tokens: Tensor  # (B, N, D) final-normed patch tokens
    prenorm: Tensor  # (B, N, D) last block output, before the final norm (grounding Prompter)
    pooled: Tensor | None = None  # (B, D) MAP-pooled embedding, when asked for
    layers: dict[int, Tensor] = field(default_factory=dict)  # 1-based layer -> normed (B, N, D)
    grid: tuple[int, int] = (0, 0)  # patch grid (rows, columns)
    # The batched pass this one was split from (None for a pass of its own): its tensors are
    # where every gradient into the encoder meets, whichever slice a task read.
    source: EncoderOutput | None = None

    def split(self, size: int) -> tuple[EncoderOutput, EncoderOutput]:
        """The first `size` images' outputs and the rest's (undoes a batched pass)."""

        def rows(part: slice) -> EncoderOutput:
            pooled = self.pooled[part] if self.pooled is not None else None
            layers = {k: v[part] for k, v in self.layers.items()}
            return EncoderOutput(
                self.tokens[part], self.prenorm[part], pooled, layers, self.grid, source=self
            )

        return rows(slice(None, size)), rows(slice(size, None))


class VisionTransformer(nn.Module):
    """Patch embedding, learned positions (interpolated for other sizes), pre-norm blocks, final
    norm and MAP pooling. `mask` (B, N) replaces masked patch embeddings by a learnable token
    before positions are added (iBOT); `layers` selects 1-based intermediate outputs, returned
    after the final norm (as DINOv2's `get_intermediate_layers(norm=True)` feeds DPT)."""

    def __init__(self, spec: EncoderSpec, *, mask_token: bool = False):
        super().__init__()
        self.spec = spec
        width = spec.width
        self.patch_size = spec.patch_size
        self.patch_embed = nn.Conv2d(3, width, spec.patch_size, stride=spec.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.grid * spec.grid, width))
        # Only built when a task masks patches: an unused parameter would break DDP.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width)) if mask_token else None
        self.blocks = nn.ModuleList(
            Block(width, spec.heads, spec.mlp_ratio, spec.layer_norm_eps) for _ in range(spec.depth)
        )
        self.norm = nn.LayerNorm(width, eps=spec.layer_norm_eps)
        self.pool = AttentionPool(width, spec.heads, spec.mlp_ratio, spec.layer_norm_eps)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @property
    def width(self) -> int:
        return self.spec.width

    def position_embedding(self, rows: int, cols: int) -> Tensor:
        grid = self.spec.grid
        if (rows, cols) == (grid, grid):
            return self.pos_embed
        table = self.pos_embed.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(rows, cols), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)

    def forward(
        self,
        images: Tensor,
        mask: Tensor | None = None,
        layers: Collection[int] = (),
        pool: bool = True,
    ) -> EncoderOutput:
        if images.shape[-1] % self.patch_size or images.shape[-2] % self.patch_size:
            raise ValueError(
                f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size "
                f"{self.patch_size}"
            )
        x = self.patch_embed(images)
        rows, cols = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this encoder was built without a mask token")
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = x + self.position_embedding(rows, cols).to(x.dtype)
        taps: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks, start=1):
            x = block(x)
            if index in layers and index != len(self.blocks):
                taps[index] = self.norm(x)
        tokens = self.norm(x)
        if len(self.blocks) in layers:
            taps[len(self.blocks)] = tokens
        return EncoderOutput(
            tokens=tokens,
            prenorm=x,
            pooled=self.pool(tokens) if pool else None,
            layers=taps,
            grid=(rows, cols),
        )
