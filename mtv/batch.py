"""The batch a training step consumes: every view and label the task graph asked the loader for."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    """Tensors of one (per-rank) batch. Fields a run's tasks do not need stay None.

    Coordinates: boxes are xyxy in [0, 1] of the global crop; depth is relative disparity of the
    global crop at its resolution; `patch_mask` marks the patches of the global crop that the
    masked view replaces with the mask token.
    """

    images: Tensor  # (B, 3, H, W) global crop, normalised
    captions: Tensor | None = None  # (B, L) caption token ids
    local_images: Tensor | None = None  # (B, M, 3, h, w) local crops
    patch_mask: Tensor | None = None  # (B, N) bool, True = masked
    boxes: Tensor | None = None  # (B, R, 4) float
    box_valid: Tensor | None = None  # (B, R) bool, False = padding
    region_names: Tensor | None = None  # (B, R, L) entity-name token ids
    region_name_ids: Tensor | None = None  # (B, R) int64, equal ids = equal name strings
    depth: Tensor | None = None  # (B, 1, H, W) relative disparity
    depth_valid: Tensor | None = None  # (B, 1, H, W) bool

    @property
    def size(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: value.to(device, non_blocking=non_blocking)
            for f in fields(self)
            if (value := getattr(self, f.name)) is not None
        }
        return replace(self, **moved)
