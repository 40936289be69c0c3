"""Transformer building blocks shared by the image encoder, the text tower and the task heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def init_weights(module: nn.Module) -> None:
    """ViT-style init: truncated-normal linear weights (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        # SigLIP uses the tanh approximation of GELU.
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads)
        # Unbound along the q/k/v axis, then each transposed: the same values as one permute,
        # without the cat + permuted copy its backward needs (benchmarks/results/peer.md).
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class CrossAttention(nn.Module):
    """Queries attend to a separate key/value sequence (MAP pooling, the grounding Prompter)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def split_heads(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def keys_values(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head keys and values of `context`, so several query sets can share them."""
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def attend(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        batch, length, width = queries.shape
        out = F.scaled_dot_product_attention(self.split_heads(self.q(queries)), keys, values)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        return self.attend(queries, *self.keys_values(context))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AttentionPool(nn.Module):
    """Multihead attention pooling (MAP, as SigLIP): a learned probe attends to the tokens."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, width))
        self.attn = CrossAttention(width, heads)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        nn.init.normal_(self.probe, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.attn(self.probe.expand(tokens.shape[0], -1, -1), tokens)
        x = x + self.mlp(self.norm(x))
        return x[:, 0]
