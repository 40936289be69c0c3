"""The text tower: a bidirectional transformer pooled at the last position, projected to the
joint space (as SigLIP's text model, so exported weights load into `SiglipTextModel`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtv.models.layers import Block, init_weights
from mtv.specs.model import TextSpec


class TextTransformer(nn.Module):
    def __init__(self, spec: TextSpec, embed_dim: int):
        super().__init__()
        self.spec = spec
        self.token_embed = nn.Embedding(spec.vocab_size, spec.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.context_length, spec.width))
        self.blocks = nn.ModuleList(
            Block(spec.width, spec.heads, spec.mlp_ratio, spec.layer_norm_eps)
            for _ in range(spec.depth)
        )
        self.norm = nn.LayerNorm(spec.width, eps=spec.layer_norm_eps)
        self.head = nn.Linear(spec.width, embed_dim)
        self.apply(init_weights)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, token_ids: Tensor) -> Tensor:
        """(B, L) token ids, padded to the context length -> (B, embed_dim) embeddings."""
        length = token_ids.shape[-1]
        if length > self.spec.context_length:
            raise ValueError(
                f"{length} tokens exceed the context length {self.spec.context_length}"
            )
        x = self.token_embed(token_ids) + self.pos_embed[:, :length].to(self.token_embed.weight)
        for block in self.blocks:
            x = block(x)
        # SigLIP pools the last position; tokenizers pad every text to the context length, so the
        # pooled position is the same for all texts and bidirectional attention reaches the words.
        return self.head(self.norm(x)[:, -1])
