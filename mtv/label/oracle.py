"""The mini-world oracle: experts that read the exact ground truth, and can degrade it with a
seeded noise model, so users can study how pseudo-label quality moves the results."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtv.label.base import BoxExpert, BoxLabel, DepthExpert, DepthLabel, ExpertInfo, LabelInput
from mtv.world.corpus import GroundTruth
from mtv.world.geometry import SHAPE_NAMES
from mtv.world.scene import COLORS, SIZES

ORACLE_VERSION = "1"


def key_rng(seed: int, key: str, salt: str) -> np.random.Generator:
    """Noise that depends only on (seed, key): a resumed or re-ordered run draws the same."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def _open_truth(groundtruth: str | Path | GroundTruth) -> GroundTruth:
    return groundtruth if isinstance(groundtruth, GroundTruth) else GroundTruth(groundtruth)


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(image[None, None], (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))[0, 0]


class OracleDepth(DepthExpert):
    """Relative disparity 1/depth from the ground truth (0 for the sky), then optionally a
    random misregistration (`warp`), a blur and multiplicative noise."""

    def __init__(
        self,
        groundtruth: str | Path | GroundTruth,
        blur_sigma: float = 0.0,
        noise: float = 0.0,
        warp: float = 0.0,
        seed: int = 0,
    ):
        self.truth = _open_truth(groundtruth)
        self.blur_sigma, self.noise, self.warp, self.seed = blur_sigma, noise, warp, seed

    def info(self) -> ExpertInfo:
        settings = {
            "blur_sigma": self.blur_sigma,
            "noise": self.noise,
            "warp": self.warp,
            "seed": self.seed,
        }
        return ExpertInfo("oracle_depth", ORACLE_VERSION, settings)

    def _degrade(self, disparity: np.ndarray, key: str) -> np.ndarray:
        rng = key_rng(self.seed, key, "depth")
        image = torch.from_numpy(disparity)
        if self.warp > 0:
            scale = 1 + rng.uniform(-self.warp, self.warp)
            shift = rng.uniform(-self.warp, self.warp, size=2)
            theta = torch.tensor(
                [[scale, 0.0, shift[0]], [0.0, scale, shift[1]]], dtype=torch.float32
            )
            grid = F.affine_grid(theta[None], [1, 1, *image.shape], align_corners=False)
            image = F.grid_sample(
                image[None, None], grid, padding_mode="border", align_corners=False
            )[0, 0]
        if self.blur_sigma > 0:
            image = _gaussian_blur(image, self.blur_sigma)
        if self.noise > 0:
            image = (
                image * torch.from_numpy(1 + self.noise * rng.standard_normal(image.shape)).float()
            )
        return image.numpy().astype(np.float32)

    def predict(self, inputs: Sequence[LabelInput]) -> list[DepthLabel]:
        out = []
        for item in inputs:
            depth = self.truth.dense("depth", item.key)
            disparity = np.where(np.isfinite(depth), 1.0 / np.maximum(depth, 1e-6), 0.0)
            out.append(DepthLabel(self._degrade(disparity.astype(np.float32), item.key)))
        return out


class OracleBoxes(BoxExpert):
    """Ground-truth boxes and entity names; optionally jittered, missed, joined by spurious boxes
    and given wrong names. Exact boxes score 1."""

    def __init__(
        self,
        groundtruth: str | Path | GroundTruth,
        jitter: float = 0.0,
        miss_rate: float = 0.0,
        false_rate: float = 0.0,
        wrong_name_rate: float = 0.0,
        seed: int = 0,
    ):
        self.truth = _open_truth(groundtruth)
        self.jitter, self.miss_rate = jitter, miss_rate
        self.false_rate, self.wrong_name_rate, self.seed = false_rate, wrong_name_rate, seed

    def info(self) -> ExpertInfo:
        settings = {
            "jitter": self.jitter,
            "miss_rate": self.miss_rate,
            "false_rate": self.false_rate,
            "wrong_name_rate": self.wrong_name_rate,
            "seed": self.seed,
        }
        return ExpertInfo("oracle_boxes", ORACLE_VERSION, settings)

    @staticmethod
    def _random_name(rng: np.random.Generator) -> str:
        return " ".join(
            [
                list(SIZES)[rng.integers(len(SIZES))],
                list(COLORS)[rng.integers(len(COLORS))],
                SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))],
            ]
        )

    def _wrong(self, name: str, rng: np.random.Generator) -> str:
        size, color, shape = name.split()
        if rng.random() < 0.5:
            color = [c for c in COLORS if c != color][rng.integers(len(COLORS) - 1)]
        else:
            shape = [s for s in SHAPE_NAMES if s != shape][rng.integers(len(SHAPE_NAMES) - 1)]
        return f"{size} {color} {shape}"

    def predict(
        self, inputs: Sequence[LabelInput], queries: Sequence[Sequence[str]]
    ) -> list[BoxLabel]:
        out = []
        for item in inputs:
            true_boxes, true_names = self.truth.boxes(item.key)
            rng = key_rng(self.seed, item.key, "boxes")
            boxes, names, scores = [], [], []
            for box, name in zip(true_boxes, true_names, strict=True):
                if rng.random() < self.miss_rate:
                    continue
                if self.jitter > 0:
                    size = np.repeat(box[2:] - box[:2], 2)
                    box = np.clip(box + self.jitter * size * rng.standard_normal(4), 0.0, 1.0)
                    box = np.concatenate(
                        [np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])]
                    )
                if rng.random() < self.wrong_name_rate:
                    name = self._wrong(name, rng)
                boxes.append(box)
                names.append(name)
                scores.append(1.0 if self.jitter == 0 else float(rng.uniform(0.5, 1.0)))
            for _ in range(rng.poisson(self.false_rate) if self.false_rate > 0 else 0):
                corner = rng.uniform(0.0, 0.8, size=2)
                extent = rng.uniform(0.05, 0.3, size=2)
                boxes.append(np.concatenate([corner, np.minimum(corner + extent, 1.0)]))
                names.append(self._random_name(rng))
                scores.append(float(rng.uniform(0.1, 0.6)))
            out.append(
                BoxLabel(np.asarray(boxes, np.float32).reshape(-1, 4), names, np.asarray(scores))
            )
        return out
