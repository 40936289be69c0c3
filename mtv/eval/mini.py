"""The `mini` evaluation suite: every evaluator on held-out mini-world scenes with exact ground
truth (rendered in memory from a seed the training corpus never uses), in minutes on a CPU."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from mtv.eval.metrics import (
    correspondence_recall,
    relative_depth_errors,
    result_rows,
    retrieval_recall,
    zero_shot_accuracy,
)
from mtv.eval.model import Features, FrozenModel, class_embeddings
from mtv.eval.probes import depth_probe_errors, patch_depth, segmentation_probe_miou
from mtv.world.geometry import SHAPE_NAMES
from mtv.world.render import CLASS_NAMES, RenderedView, render_views
from mtv.world.scene import sample_scene

EVAL_SEED = 1_000_003  # never a training seed: the suite's scenes are held out
TEMPLATES = ("a {}.", "a photo of a {}.", "a rendering of a {}.", "a {} on the floor.")
MAX_PROBE_DEPTH = 20.0  # world units; about the 95th percentile of patch depth in the mini-world


@dataclass
class MiniData:
    views: list[RenderedView]  # scene i's two views at 2i and 2i + 1
    images: np.ndarray  # (N, H, W, 3)

    @classmethod
    def render(cls, scenes: int, size: int) -> MiniData:
        items = [(sample_scene(EVAL_SEED, i, views=2), v) for i in range(scenes) for v in range(2)]
        views = [
            view
            for start in range(0, len(items), 128)
            for view in render_views(items[start : start + 128], size)
        ]
        return cls(views, np.stack([v.rgb for v in views]))


def zero_shot(model: FrozenModel, data: MiniData, features: Features) -> dict[str, float]:
    """Classify object crops by shape with prompt-averaged class embeddings."""
    crops, labels = [], []
    size = data.images.shape[1]
    for view in data.views:
        for box, instance in zip(view.boxes, view.box_instances, strict=True):
            x0, y0, x1, y1 = (box * size).round().astype(int)
            if (x1 - x0) * (y1 - y0) < (size // 8) ** 2:
                continue
            side = int(max(x1 - x0, y1 - y0) * 1.2)
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            left, top = max(0, cx - side // 2), max(0, cy - side // 2)
            crop = (
                torch.from_numpy(view.rgb[top : top + side, left : left + side])
                .permute(2, 0, 1)[None]
                .float()
            )
            crops.append(
                F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0]
                .permute(1, 2, 0)
                .round()
                .byte()
                .numpy()
            )
            labels.append(
                SHAPE_NAMES.index(CLASS_NAMES[int(view.semantic[view.instance == instance][0])])
            )
    image = model.images(np.stack(crops)).pooled
    text = class_embeddings(model, SHAPE_NAMES, TEMPLATES)
    return zero_shot_accuracy(image, text, torch.tensor(labels))


def retrieval(model: FrozenModel, data: MiniData, features: Features) -> dict[str, float]:
    first = torch.arange(0, len(data.views), 2)  # one view per scene: captions differ per scene
    text = model.texts([data.views[i].caption for i in first.tolist()])
    return retrieval_recall(features.pooled[first], text, torch.arange(len(first)))


def _halves(n: int) -> tuple[slice, slice]:
    return slice(0, n // 2), slice(n // 2, n)


def segmentation(model: FrozenModel, data: MiniData, features: Features) -> dict[str, float]:
    """Linear probe of patch tokens -> semantic class (sky, floor, 7 shapes); mIoU in pixels."""
    semantic = np.stack([v.semantic for v in data.views]).astype(np.int64)
    train, test = _halves(len(semantic))
    patches = features.patches
    miou = segmentation_probe_miou(
        patches[train], semantic[train], patches[test], semantic[test], len(CLASS_NAMES)
    )
    return {"miou": miou}


def depth_probe(model: FrozenModel, data: MiniData, features: Features) -> dict[str, float]:
    """[global ; patch] -> 256 depth bins (the paper's protocol), per patch of depth up to
    `MAX_PROBE_DEPTH`; RMSE and AbsRel."""
    depth = np.stack([v.depth for v in data.views])
    target, whole = patch_depth(depth, np.isfinite(depth), features.patches.shape[1])
    # Patches that see no sky, nearer than the cap (as NYUv2's 10 m): the floor near the horizon
    # reaches hundreds of units and would make RMSE a measure of a few patches.
    valid = whole & (target <= MAX_PROBE_DEPTH)
    train, test = _halves(len(depth))
    return depth_probe_errors(
        Features(features.pooled[train], features.patches[train]),
        target[train],
        valid[train],
        Features(features.pooled[test], features.patches[test]),
        target[test],
        valid[test],
    )


def geometric_correspondence(
    model: FrozenModel, data: MiniData, features: Features
) -> dict[str, float]:
    """Object patch centres of view 0, reprojected into view 1 with the true depth and cameras
    (where not occluded), matched by nearest patch feature; recall at pixel thresholds."""
    size = data.images.shape[1]
    grid = features.patches.shape[1]
    step = size / grid
    centres = (np.arange(grid) + 0.5) * step
    sources, targets, truths = [], [], []
    for i in range(0, len(data.views), 2):
        first, second = data.views[i], data.views[i + 1]
        rows, cols = np.meshgrid(centres.astype(int), centres.astype(int), indexing="ij")
        object_patch = first.instance[rows, cols] > 0
        z = np.where(object_patch, first.depth[rows, cols], 1.0)  # sky depth is inf
        k, pose = first.intrinsics.astype(np.float64), first.world_to_camera.astype(np.float64)
        camera = np.stack(
            [(cols + 0.5 - k[0, 2]) / k[0, 0] * z, (rows + 0.5 - k[1, 2]) / k[1, 1] * z, z], -1
        )
        world = (camera - pose[:3, 3]) @ pose[:3, :3]
        k2, pose2 = second.intrinsics.astype(np.float64), second.world_to_camera.astype(np.float64)
        cam2 = world @ pose2[:3, :3].T + pose2[:3, 3]
        xy = cam2[..., :2] / cam2[..., 2:] * np.diag(k2)[:2] + k2[:2, 2]
        inside = object_patch & (cam2[..., 2] > 0) & (xy >= 0).all(-1) & (xy < size).all(-1)
        px = np.clip(xy.astype(int), 0, size - 1)
        seen = inside & (
            np.abs(second.depth[px[..., 1], px[..., 0]] - cam2[..., 2]) < 0.02 * cam2[..., 2]
        )
        for r, c in zip(*np.nonzero(seen), strict=True):
            sources.append(features.patches[i, r, c])
            targets.append(i + 1)
            truths.append(xy[r, c])
    if not sources:
        return {}
    return _recalls(features, sources, targets, truths, step, (size / 16, size / 8, size / 4))


def _recalls(
    features: Features,
    sources: list[torch.Tensor],
    targets: list[int],
    truths: list[np.ndarray],
    step: float,
    thresholds_px: tuple[float, ...],
) -> dict[str, float]:
    """Mean recall of nearest-patch matches; locations and thresholds in image pixels (the
    matching itself runs on the patch grid, whose cells are `step` pixels wide)."""
    found: dict[str, list[float]] = {f"recall@{t:g}px": [] for t in thresholds_px}
    for source, target, truth in zip(sources, targets, truths, strict=True):
        recall = correspondence_recall(
            source[None],
            features.patches[target],
            torch.tensor(np.asarray([truth]) / step, dtype=torch.float32),
            tuple(t / step for t in thresholds_px),
        )
        for name, value in zip(found, recall.values(), strict=True):
            found[name].append(value)
    return {name: float(np.mean(values)) for name, values in found.items()}


def semantic_correspondence(
    model: FrozenModel, data: MiniData, features: Features
) -> dict[str, float]:
    """Keypoints of the same kind on different instances (different scenes): the nearest patch
    feature in the other image must land within 10% of the image side (PCK@0.1)."""
    size = data.images.shape[1]
    grid = features.patches.shape[1]
    step = size / grid
    by_kind: dict[int, list[tuple[int, float, float]]] = {}
    for index, view in enumerate(data.views[0::2]):
        for _, kp_id, x, y, visible in view.keypoints:
            if visible:
                by_kind.setdefault(int(kp_id), []).append((2 * index, float(x), float(y)))
    sources, targets, truths = [], [], []
    for points in by_kind.values():
        for (a, xa, ya), (b, xb, yb) in itertools.pairwise(points):
            row, col = min(int(ya / step), grid - 1), min(int(xa / step), grid - 1)
            sources.append(features.patches[a, row, col])
            targets.append(b)
            truths.append(np.array([xb, yb]))
    if not sources:
        return {}
    recall = _recalls(features, sources, targets, truths, step, (0.1 * size,))
    return {"pck@0.1": next(iter(recall.values()))}


def relative_depth(model: FrozenModel, data: MiniData, features: Features) -> dict[str, float]:
    """The run's own depth head, zero-shot: AbsRel and delta1 after scale-and-shift alignment."""
    if not model.has_depth_head:
        return {}
    disparity = model.disparity(data.images)
    depth = torch.from_numpy(np.stack([v.depth for v in data.views]))
    return relative_depth_errors(disparity, depth, torch.isfinite(depth))


EVALUATORS: dict[str, Callable[[FrozenModel, MiniData, Features], dict[str, float]]] = {
    "zero_shot": zero_shot,
    "retrieval": retrieval,
    "segmentation": segmentation,
    "depth_probe": depth_probe,
    "geometric_correspondence": geometric_correspondence,
    "semantic_correspondence": semantic_correspondence,
    "relative_depth": relative_depth,
}


def run_mini_suite(
    model: FrozenModel, only: list[str] | None = None, scenes: int = 120
) -> pl.DataFrame:
    """Rows (evaluator, metric, value, higher_is_better) for the chosen evaluators."""
    unknown = sorted(set(only or []) - set(EVALUATORS))
    if unknown:
        raise ValueError(f"unknown evaluator(s) {unknown}; known: {', '.join(EVALUATORS)}")
    # Render at the training corpus's resolution when it is the mini-world.
    size = getattr(model.spec.data.source, "image_size", model.size)
    data = MiniData.render(scenes, size)
    features = model.images(data.images)
    chosen = only or list(EVALUATORS)
    return result_rows({name: EVALUATORS[name](model, data, features) for name in chosen})
