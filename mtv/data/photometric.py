"""Photometric augmentation of one view, as DINOv2's `DataAugmentationDINO`: colour jitter
(brightness, contrast, saturation, hue in random order), greyscale, Gaussian blur, solarisation.

Pixel values only change, never positions, so boxes and depth need nothing. Images are (3, H, W)
floats in [0, 1]; every draw comes from the sample's generator, so a resumed run repeats them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtv.specs.experiment import PhotometricSpec

# ITU-R 601 luma, as torchvision's rgb_to_grayscale.
LUMA = (0.299, 0.587, 0.114)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _chance(generator: torch.Generator, probability: float) -> bool:
    return float(torch.rand((), generator=generator)) < probability


def grayscale(image: Tensor) -> Tensor:
    """(3, H, W) -> (1, H, W) luma."""
    weights = torch.tensor(LUMA, dtype=image.dtype, device=image.device)
    return (image * weights[:, None, None]).sum(0, keepdim=True)


def adjust_brightness(image: Tensor, factor: float) -> Tensor:
    return (image * factor).clamp(0.0, 1.0)


def adjust_contrast(image: Tensor, factor: float) -> Tensor:
    """Blend with the image's mean luma (factor 0: flat grey, 1: unchanged)."""
    mean = grayscale(image).mean()
    return ((image - mean) * factor + mean).clamp(0.0, 1.0)


def adjust_saturation(image: Tensor, factor: float) -> Tensor:
    """Blend with the greyscale image (factor 0: grey, 1: unchanged)."""
    grey = grayscale(image)
    return ((image - grey) * factor + grey).clamp(0.0, 1.0)


def rgb_to_hsv(image: Tensor) -> Tensor:
    """(3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = image.unbind(0)
    high, low = image.max(0).values, image.min(0).values
    chroma = high - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        high == r,
        ((g - b) / safe) % 6,
        torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue)) % 1.0
    saturation = torch.where(high > 0, chroma / torch.where(high > 0, high, 1.0), 0.0)
    return torch.stack([hue, saturation, high])


def hsv_to_rgb(image: Tensor) -> Tensor:
    """Inverse of `rgb_to_hsv`."""
    hue, saturation, value = image.unbind(0)
    # The standard closed form: channel n takes v - v s max(0, min(k, 4 - k, 1)),
    # k = (n + 6 h) mod 6 with n = 5, 3, 1 for r, g, b.
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + 6 * hue) % 6
        channels.append(value - value * saturation * (torch.minimum(k, 4 - k).clamp(0, 1)))
    return torch.stack(channels)


def adjust_hue(image: Tensor, shift: float) -> Tensor:
    """Rotate the hue by `shift` turns (0.1 = 36 degrees)."""
    hsv = rgb_to_hsv(image)
    hsv = torch.stack([(hsv[0] + shift) % 1.0, hsv[1], hsv[2]])
    return hsv_to_rgb(hsv).clamp(0.0, 1.0)


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with a kernel of radius ceil(3 sigma), reflected at the border."""
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, image.shape[-1] - 1, image.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return out[0]


def solarize(image: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert the pixels at or above `threshold`."""
    return torch.where(image >= threshold, 1.0 - image, image)


def augment(image: Tensor, spec: PhotometricSpec, generator: torch.Generator) -> Tensor:
    """One view's photometric augmentation: (3, H, W) in [0, 1] -> the same shape."""
    if _chance(generator, spec.jitter_probability):
        order = torch.randperm(4, generator=generator).tolist()
        factors = [
            _uniform(generator, max(0.0, 1 - spec.brightness), 1 + spec.brightness),
            _uniform(generator, max(0.0, 1 - spec.contrast), 1 + spec.contrast),
            _uniform(generator, max(0.0, 1 - spec.saturation), 1 + spec.saturation),
            _uniform(generator, -spec.hue, spec.hue),
        ]
        operations = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        for index in order:
            image = operations[index](image, factors[index])
    if _chance(generator, spec.grayscale_probability):
        image = grayscale(image).expand(3, -1, -1).clone()
    if _chance(generator, spec.blur_probability):
        image = gaussian_blur(image, _uniform(generator, *spec.blur_sigma))
    if _chance(generator, spec.solarize_probability):
        image = solarize(image)
    return image
