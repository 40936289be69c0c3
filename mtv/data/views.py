"""Views of one sample: random resized crops that move boxes and depth exactly with the image.

A crop is a rectangle in normalised coordinates of the original image, snapped to whole image
pixels. The image crop is resized with antialiasing; the depth map (which covers the whole
original image at the store's resolution) is resampled over the very same rectangle; boxes are
mapped into the crop, clipped to it, and dropped when too little of them remains inside.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ViewRequest:
    """What a task graph needs from the loader, as plain data (the graph makes it)."""

    global_size: int
    local_size: int
    local_crops: int = 0
    max_regions: int = 0  # region slots per image; 0 = no boxes needed
    caption: bool = False
    depth: bool = False
    patch_mask: Callable[[torch.Generator], Tensor] | None = None  # draws one image's mask


@dataclass(frozen=True)
class Crop:
    """[x0, x1) x [y0, y1) in normalised coordinates of the original image."""

    x0: float
    y0: float
    x1: float
    y1: float
    flip: bool = False

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def sample_crop(
    image_size: tuple[int, int],
    scale: tuple[float, float],
    aspect: tuple[float, float],
    generator: torch.Generator,
    flip: bool = False,
    attempts: int = 10,
) -> Crop:
    """A random resized crop (as torchvision's RandomResizedCrop): area fraction in `scale`,
    aspect ratio (in pixels) log-uniform in `aspect`, snapped to whole pixels of an image of
    (height, width). Falls back to the largest centred crop with a valid aspect ratio."""
    height, width = image_size
    area = height * width
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(attempts):
        target = area * _uniform(generator, *scale)
        ratio = math.exp(_uniform(generator, log_low, log_high))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            break
    else:
        ratio = width / height
        if ratio < aspect[0]:
            w, h = width, min(height, round(width / aspect[0]))
        elif ratio > aspect[1]:
            w, h = min(width, round(height * aspect[1])), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
    mirrored = flip and bool(torch.rand((), generator=generator) < 0.5)
    return Crop(left / width, top / height, (left + w) / width, (top + h) / height, mirrored)


def crop_image(image: Tensor, crop: Crop, size: int) -> Tensor:
    """(C, H, W) float image -> (C, size, size): the crop's pixels, resized with antialiasing."""
    height, width = image.shape[-2:]
    top, bottom = round(crop.y0 * height), round(crop.y1 * height)
    left, right = round(crop.x0 * width), round(crop.x1 * width)
    patch = image[:, top:bottom, left:right][None]
    out = F.interpolate(
        patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0]
    return out.flip(-1) if crop.flip else out


def _sampling_grid(crop: Crop, size: int, map_size: tuple[int, int]) -> Tensor:
    """Where each output pixel samples the map. Positions are clamped to the centres of the
    map pixels inside the crop, so the map is resampled as if it were cut out first, exactly as
    the image is (no value from outside the crop leaks in at its border)."""
    rows, cols = map_size
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    xs = (crop.x0 + crop.width * centres).clamp(
        crop.x0 + 0.5 / cols, max(crop.x1 - 0.5 / cols, crop.x0 + 0.5 / cols)
    )
    if crop.flip:
        xs = xs.flip(0)
    ys = (crop.y0 + crop.height * centres).clamp(
        crop.y0 + 0.5 / rows, max(crop.y1 - 0.5 / rows, crop.y0 + 0.5 / rows)
    )
    grid = torch.stack(torch.meshgrid(2 * xs - 1, 2 * ys - 1, indexing="xy"), dim=-1)
    return grid[None]  # (1, size, size, 2), align_corners=False coordinates


def crop_map(values: Tensor, valid: Tensor, crop: Crop, size: int) -> tuple[Tensor, Tensor]:
    """(R, R) map covering the whole original image -> (size, size) over the crop: bilinear for
    the values, and a pixel stays valid only if every map pixel it draws from is valid."""
    grid = _sampling_grid(crop, size, tuple(values.shape[-2:]))  # type: ignore[arg-type]
    filled = torch.where(valid, values, 0.0)[None, None].float()
    out = F.grid_sample(filled, grid, mode="bilinear", padding_mode="border", align_corners=False)
    weight = F.grid_sample(
        valid[None, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0, 0], weight[0, 0] > 1 - 1e-4


def crop_boxes(
    boxes: np.ndarray, crop: Crop, min_visibility: float
) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) xyxy in [0, 1] of the original image -> (boxes in [0, 1] of the crop, kept mask).
    A box is kept when at least `min_visibility` of its area lies inside the crop."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    origin = np.array([crop.x0, crop.y0, crop.x0, crop.y0], dtype=np.float32)
    extent = np.array([crop.width, crop.height, crop.width, crop.height], dtype=np.float32)
    mapped = (boxes - origin) / extent
    clipped = np.clip(mapped, 0.0, 1.0)
    area = np.prod(np.clip(mapped[:, 2:] - mapped[:, :2], 0, None), axis=1)
    inside = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
    keep = (inside > 0) & (inside >= min_visibility * np.maximum(area, 1e-12))
    if crop.flip:
        clipped = np.stack([1 - clipped[:, 2], clipped[:, 1], 1 - clipped[:, 0], clipped[:, 3]], 1)
    return clipped[keep], keep
