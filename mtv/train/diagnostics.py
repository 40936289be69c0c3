"""Task interaction at the shared encoder: each task's gradient norm there and the cosine
between every pair of tasks' encoder gradients (negative = interference, positive = synergy)."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn


def gradient_probe(
    encoder: nn.Module, losses: dict[str, Tensor], weights: dict[str, float]
) -> dict[str, float]:
    """{"grad_norm/<task>": ..., "grad_cos/<a>~<b>": ...} of the weighted task losses with
    respect to the encoder's trainable parameters (one extra backward per task)."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    flat: dict[str, Tensor] = {}
    for name, loss in losses.items():
        grads = torch.autograd.grad(
            weights[name] * loss, params, retain_graph=True, allow_unused=True
        )
        flat[name] = torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).flatten().float()
                for g, p in zip(grads, params, strict=True)
            ]
        )
    out = {f"grad_norm/{name}": float(g.norm()) for name, g in flat.items()}
    for a, b in itertools.combinations(flat, 2):
        cosine = torch.nn.functional.cosine_similarity(flat[a], flat[b], dim=0, eps=1e-12)
        out[f"grad_cos/{a}~{b}"] = float(cosine)
    return out
