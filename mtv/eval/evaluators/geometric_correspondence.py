"""Geometric correspondence: points seen in two views of one scene; each source point takes the
feature of the patch containing it, matched to the nearest (cosine) patch of the target view; a
match is right when that patch's centre lies within a threshold of the point's true location.
Recall at size/16, size/8 and size/4 pixels. Trivial: a match drawn uniformly among the
target's patches.

- mini: object patch centres of view 0 reprojected into view 1 with the true depth and cameras
  (where not occluded);
- navi: NAVI's view pairs (`mtv.eval.navi`), the mean over pairs (each pair weighs the same, as
  Probe3D's fixed number of matches a pair), and at size/8 per bin of relative rotation
  (Probe3D's 0-30-60-90-120 degrees; empty bins left out).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from mtv.eval.contract import Evaluator, image_features, register_evaluator
from mtv.eval.metrics import (
    Score,
    Scores,
    correspondence_recall,
    query_recalls,
    random_match_recall,
)
from mtv.eval.mini import MiniData
from mtv.eval.model import FrozenModel
from mtv.eval.navi import ViewPairSet, pair_batches

ROTATION_BINS = (0, 30, 60, 90, 120)  # degrees: Probe3D's bins of NAVI pairs' relative rotation
PAIRS_PER_BATCH = 256  # NAVI pairs whose images' features are held at once


def reprojected_queries(data: MiniData, grid: int) -> list[tuple[int, int, int, int, np.ndarray]]:
    """(source view, row, col, target view, true xy) for each object patch centre of a scene's
    first view that is visible in its second: reprojected with the true depth and cameras, kept
    where the second view's depth agrees (not occluded)."""
    size = data.images.shape[1]
    step = size / grid
    centres = (np.arange(grid) + 0.5) * step
    queries: list[tuple[int, int, int, int, np.ndarray]] = []  # source, row, col, target, xy
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
        queries += [(i, r, c, i + 1, xy[r, c]) for r, c in zip(*np.nonzero(seen), strict=True)]
    return queries


@register_evaluator
class MiniGeometricCorrespondence(Evaluator):
    name = "geometric_correspondence"
    suites = ("mini",)

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        patches = image_features(model, data.images).patches
        size, grid = data.images.shape[1], patches.shape[1]
        queries = reprojected_queries(data, grid)
        return query_recalls(patches, queries, size / grid, (size / 16, size / 8, size / 4))


@register_evaluator
class NaviGeometricCorrespondence(Evaluator):
    name = "geometric_correspondence"
    suites = ("navi",)

    def __call__(self, model: FrozenModel, data: ViewPairSet) -> Scores:
        size = data.images.shape[1]
        thresholds_px = (size / 16, size / 8, size / 4)
        names = [f"recall@{t:g}px" for t in thresholds_px]
        found, chance, angles = [], [], []
        for images, batch in pair_batches(data, PAIRS_PER_BATCH):
            patches = model.images(data.images[images]).patches  # a batch of pairs at a time
            row = {int(image): n for n, image in enumerate(images)}
            grid = tuple(patches.shape[1:3])
            step = size / grid[1]  # pixels per patch (square images, square grid)
            thresholds = tuple(t / step for t in thresholds_px)
            for pair in batch:
                if not len(pair.source_xy):
                    continue
                cells = np.minimum((pair.source_xy / step).astype(np.int64), grid[1] - 1)
                queries = patches[row[pair.source], cells[:, 1], cells[:, 0]]
                truth = torch.from_numpy(pair.target_xy / step)
                recall = correspondence_recall(
                    queries, patches[row[pair.target]], truth, thresholds
                )
                random = random_match_recall(grid, truth, thresholds)  # type: ignore[arg-type]
                found.append(list(recall.values()))
                chance.append(list(random.values()))
                angles.append(pair.rotation)
        if not found:
            return {}
        hits, trivial, rotation = np.array(found), np.array(chance), np.array(angles)
        out = {
            name: Score(float(hits[:, k].mean()), float(trivial[:, k].mean()))
            for k, name in enumerate(names)
        }
        for low, high in itertools.pairwise(ROTATION_BINS):
            inside = (rotation >= low) & (rotation < high)
            if inside.any():
                out[f"{names[1]}_{low}-{high}deg"] = Score(
                    float(hits[inside, 1].mean()), float(trivial[inside, 1].mean())
                )
        return out
