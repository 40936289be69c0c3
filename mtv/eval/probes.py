"""Linear probes on frozen features: per-patch segmentation, and depth as the paper measures it
([global token ; patch token] -> a linear head over 256 depth bins, trained as classification)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtv.eval.metrics import depth_errors, mean_iou
from mtv.eval.model import Features


def _train(
    head: nn.Module, inputs: Tensor, loss_of, steps: int, lr: float, batch: int, seed: int
) -> None:  # type: ignore[no-untyped-def]
    # The initial weights come from `seed` too, not from the global RNG: otherwise a probe's
    # score would depend on what ran before it (e.g. the order of evaluators).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in head.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
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


# The probe protocols, shared by the `mini` suite and the public-benchmark suites ---------------


def patch_labels(masks: np.ndarray, grid: int, n_classes: int, ignore_index: int) -> Tensor:
    """(N, S, S) pixel classes -> (N, grid, grid) majority class of each patch among its
    non-ignored pixels (ignore_index where all are ignored)."""
    size = masks.shape[1]
    cell = torch.arange(size) * grid // size  # patch row/column of each pixel row/column
    patch = (cell[:, None] * grid + cell[None, :]).flatten()
    out = []
    for start in range(0, len(masks), 64):  # bounded memory: 64 * grid^2 * classes counts
        chunk = torch.from_numpy(masks[start : start + 64]).long().flatten(1)
        keep = chunk != ignore_index
        slot = (torch.arange(len(chunk))[:, None] * grid * grid + patch) * n_classes + chunk
        counts = torch.bincount(slot[keep], minlength=len(chunk) * grid * grid * n_classes)
        counts = counts.reshape(len(chunk), grid, grid, n_classes)
        best = counts.argmax(-1)
        out.append(torch.where(counts.sum(-1) > 0, best, ignore_index))
    return torch.cat(out)


def patch_depth(depth: np.ndarray, valid: np.ndarray, grid: int) -> tuple[Tensor, Tensor]:
    """(N, S, S) depth and validity -> (N, grid, grid) mean depth of each patch's valid pixels,
    and whether all its pixels are valid."""
    weight = torch.from_numpy(valid).float()[:, None]
    values = torch.from_numpy(np.where(valid, depth, 0.0)).float()[:, None]
    total = F.adaptive_avg_pool2d(values, grid)[:, 0]
    share = F.adaptive_avg_pool2d(weight, grid)[:, 0]
    return total / share.clamp(min=1e-6), share > 0.999


def segmentation_probe_miou(
    train_patches: Tensor,
    train_masks: np.ndarray,
    test_patches: Tensor,
    test_masks: np.ndarray,
    n_classes: int,
    ignore_index: int = -1,
) -> float:
    """A linear probe of (N, grid, grid, D) patch tokens fitted to each training patch's
    majority class; its test predictions, upsampled (nearest) to pixels, scored by mIoU with
    the ignore label left out."""
    grid = train_patches.shape[1]
    labels = patch_labels(train_masks, grid, n_classes, ignore_index)
    probe = SegmentationProbe(train_patches.shape[-1], n_classes)
    probe.fit(train_patches.flatten(1, 2), labels.flatten(1), ignore_index=ignore_index)
    predicted = probe.predict(test_patches.flatten(1, 2)).reshape(-1, 1, grid, grid).float()
    pixels = F.interpolate(predicted, size=test_masks.shape[1:], mode="nearest")[:, 0].long()
    return mean_iou(pixels, torch.from_numpy(test_masks).long(), n_classes, ignore_index)


def depth_probe_errors(
    train: Features,
    train_depth: Tensor,
    train_valid: Tensor,
    test: Features,
    test_depth: Tensor,
    test_valid: Tensor,
) -> dict[str, float]:
    """The paper's depth probe on (N, grid, grid) patch depths: `DepthBinProbe` with its bins
    over the valid training targets' range; RMSE and AbsRel over the valid test patches."""
    if not train_valid.any():
        raise ValueError("no training patch has valid depth everywhere")
    low, high = float(train_depth[train_valid].min()), float(train_depth[train_valid].max())
    probe = DepthBinProbe(train.patches.shape[-1], low, high)
    probe.fit(
        train.pooled, train.patches.flatten(1, 2), train_depth.flatten(1), train_valid.flatten(1)
    )
    predicted = probe.predict(test.pooled, test.patches.flatten(1, 2))
    return depth_errors(predicted, test_depth.flatten(1), test_valid.flatten(1))
