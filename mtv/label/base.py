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


@dataclass(frozen=True)
class LabelInput:
    key: str
    image: np.ndarray  # (H, W, 3) uint8 RGB, the original image
    caption: str


@dataclass
class DepthLabel:
    disparity: np.ndarray  # (h, w) float32 relative disparity, any resolution
    valid: np.ndarray | None = None  # (h, w) bool; None = every pixel valid


@dataclass
class BoxLabel:
    boxes: np.ndarray  # (n, 4) float32 xyxy in [0, 1] of the original image
    names: list[str]
    scores: np.ndarray  # (n,) float32 in [0, 1]

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if not len(self.boxes) == len(self.names) == len(self.scores):
            raise ValueError(
                f"{len(self.boxes)} boxes, {len(self.names)} names and {len(self.scores)} scores"
            )


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
