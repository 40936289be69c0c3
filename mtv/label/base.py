"""The expert interface: models that turn images (and captions) into pseudo-labels.

Depth experts give relative disparity (larger = nearer, affine-invariant; never metric depth).
Box experts give boxes in normalised xyxy coordinates *of the original image* (any padding or
resizing the model applies is undone by the expert) with an entity name and a score each.
Taggers propose the entity names a box expert is queried with.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtv.data.store import BoxLabel


@dataclass(frozen=True)
class LabelInput:
    key: str
    image: np.ndarray  # (H, W, 3) uint8 RGB, the original image
    caption: str


@dataclass
class DepthLabel:
    disparity: np.ndarray  # (h, w) float32 relative disparity, any resolution
    valid: np.ndarray | None = None  # (h, w) bool; None = every pixel valid


@dataclass(frozen=True)
class ExpertInfo:
    """What the label store records about an expert, so a store says how it was made."""

    name: str
    version: str
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "settings": self.settings}


class DepthExpert(ABC):
    @abstractmethod
    def info(self) -> ExpertInfo:
        """Name, version and settings, recorded in the store's metadata."""

    @abstractmethod
    def predict(self, inputs: Sequence[LabelInput]) -> list[DepthLabel]:
        """Relative disparity for each input, in order."""


class BoxExpert(ABC):
    @abstractmethod
    def info(self) -> ExpertInfo:
        """Name, version and settings, recorded in the store's metadata."""

    @abstractmethod
    def predict(
        self, inputs: Sequence[LabelInput], queries: Sequence[Sequence[str]]
    ) -> list[BoxLabel]:
        """Boxes for each input, looking for its entity-name `queries` (from a tagger)."""


class Tagger(ABC):
    @abstractmethod
    def info(self) -> ExpertInfo:
        """Name, version and settings, recorded in the store's metadata."""

    @abstractmethod
    def tags(self, inputs: Sequence[LabelInput]) -> list[list[str]]:
        """Entity names worth looking for in each input."""
