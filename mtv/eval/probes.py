"""Linear probes on frozen features: per-patch segmentation, and depth as the paper measures it
([global token ; patch token] -> a linear head over 256 depth bins, trained as classification)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _train(
    head: nn.Module, inputs: Tensor, loss_of, steps: int, lr: float, batch: int, seed: int
) -> None:  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        index = torch.randint(
            0, inputs.shape[0], (min(batch, inputs.shape[0]),), generator=generator
        )
        optimizer.zero_grad(set_to_none=True)
        loss_of(index).backward()
        optimizer.step()


class SegmentationProbe(nn.Module):
    """A linear classifier of patch features (B, N, D) into `n_classes` per patch."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.head = nn.Linear(dim, n_classes)

    def forward(self, patches: Tensor) -> Tensor:
        return self.head(patches)

    def fit(
        self,
        patches: Tensor,
        labels: Tensor,
        steps: int = 300,
        lr: float = 1e-2,
        batch: int = 64,
        seed: int = 0,
        ignore_index: int = -1,
    ) -> SegmentationProbe:
        """labels: (B, N) class of each patch (ignore_index: skip)."""
        features = patches.float()

        def loss(index: Tensor) -> Tensor:
            logits = self(features[index])
            return F.cross_entropy(
                logits.flatten(0, 1), labels[index].flatten(), ignore_index=ignore_index
            )

        _train(self, features, loss, steps, lr, batch, seed)
        return self

    @torch.no_grad()
    def predict(self, patches: Tensor) -> Tensor:
        return self(patches.float()).argmax(-1)


class DepthBinProbe(nn.Module):
    """Depth per patch from [global ; patch] features: logits over `n_bins` depth bins spread
    uniformly over [min_depth, max_depth]; the prediction is the softmax-weighted bin centre."""

    def __init__(self, dim: int, min_depth: float, max_depth: float, n_bins: int = 256):
        super().__init__()
        self.head = nn.Linear(2 * dim, n_bins)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, n_bins))

    def logits(self, pooled: Tensor, patches: Tensor) -> Tensor:
        joined = torch.cat([pooled[:, None].expand_as(patches), patches], dim=-1)
        return self.head(joined.float())

    def fit(
        self,
        pooled: Tensor,
        patches: Tensor,
        depth: Tensor,
        valid: Tensor,
        steps: int = 400,
        lr: float = 1e-2,
        batch: int = 64,
        seed: int = 0,
    ) -> DepthBinProbe:
        """depth, valid: (B, N) per-patch target depth; trained by cross-entropy to the target's
        bin (the paper's classification loss)."""
        centres: Tensor = self.centres  # type: ignore[assignment]
        target = (depth[..., None] - centres).abs().argmin(-1)
        target = torch.where(valid, target, -1)

        def loss(index: Tensor) -> Tensor:
            logits = self.logits(pooled[index], patches[index])
            return F.cross_entropy(logits.flatten(0, 1), target[index].flatten(), ignore_index=-1)

        _train(self, patches, loss, steps, lr, batch, seed)
        return self

    @torch.no_grad()
    def predict(self, pooled: Tensor, patches: Tensor) -> Tensor:
        return self.logits(pooled, patches).softmax(-1) @ self.centres
