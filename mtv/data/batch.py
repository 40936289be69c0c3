"""The batch a training step consumes: every view and label the task graph asked the loader for."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    """Tensors of one (per-rank) batch. Fields a run's tasks do not need stay None.

    Coordinates: boxes are xyxy in [0, 1] of the global crop; depth is relative disparity of the
    global crop at its resolution; `patch_mask` marks the patches of the global crop that the
    masked view replaces with the mask token. Padding regions (`box_valid` False) may hold any
    values. `region_name_ids` are compared across ranks, so they must be a function of the name
    alone: use `name_id`. Every rank's batch has the same shapes (the losses gather across ranks).
    """

    images: Tensor  # (B, 3, H, W) global crop, normalised
    captions: Tensor | None = None  # (B, L) caption token ids
    local_images: Tensor | None = None  # (B, M, 3, h, w) local crops
    patch_mask: Tensor | None = None  # (B, N) bool, True = masked
    boxes: Tensor | None = None  # (B, R, 4) float
    box_valid: Tensor | None = None  # (B, R) bool, False = padding
    # Each region slot's entity name as the loader tokenizes it (B, R, L); `share_region_names`
    # turns it into the batch's distinct names, each once (U, L token ids), and which of them each
    # slot holds (B, R indices into region_names): the text tower encodes U rows, not B x R.
    region_slot_names: Tensor | None = None
    region_names: Tensor | None = None
    region_name_index: Tensor | None = None
    region_name_ids: Tensor | None = None  # (B, R) int64 `name_id` of each entity name
    depth: Tensor | None = None  # (B, 1, H, W) relative disparity
    depth_valid: Tensor | None = None  # (B, 1, H, W) bool

    @property
    def size(self) -> int:
        return self.images.shape[0]

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        return replace(
            self,
            **{f.name: fn(v) for f in fields(self) if (v := getattr(self, f.name)) is not None},
        )

    def share_region_names(self) -> Batch:
        """`region_slot_names` (B, R, L) -> each distinct row once, `region_names` (U, L), and
        `region_name_index` (B, R); the per-slot tensor is dropped. On the host, before the
        device: the distinct count is data-dependent, which a compiled step could not decide
        without a host sync."""
        if self.region_slot_names is None:
            return self
        slots = self.region_slot_names.shape[:2]
        flat = self.region_slot_names.flatten(0, 1)
        names, index = torch.unique(flat, dim=0, return_inverse=True)
        return replace(
            self,
            region_slot_names=None,
            region_names=names,
            region_name_index=index.reshape(slots),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True), so host-to-device copies can overlap."""
        return self._map(lambda t: t.pin_memory())


def name_id(name: str) -> int:
    """A stable int64 id of an entity name (whitespace and case normalised): equal on every rank,
    process and run, so identical names in a global batch are recognised as identical."""
    normalised = " ".join(name.lower().split())
    digest = hashlib.blake2b(normalised.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
