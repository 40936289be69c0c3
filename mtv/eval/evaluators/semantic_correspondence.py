"""Semantic correspondence: keypoints of the same kind on different instances; each source
keypoint's patch feature is matched to the nearest (cosine) patch of the target image, right
when the patch centre lies within a threshold of the true keypoint. Trivial: a match drawn
uniformly among the target's patches.

- mini: each visible keypoint is matched into the next held-out scene that shows its shape
  (never into its own image), PCK@0.1 of the image side. Every instance is yawed at random,
  so keypoints a turn maps onto each other (a cube's four top corners) look alike, as do two
  instances of a shape: a match to any visible keypoint of the same class on the shape there
  is right (`KEYPOINT_CLASSES`); classes the names do not cover are left out;
- spair: SPair-71k's test pairs, PCK@0.1 of the target box's larger side.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from mtv.eval.contract import Evaluator, image_features, register_evaluator
from mtv.eval.formats import KeypointPairSet
from mtv.eval.metrics import (
    Score,
    Scores,
    correspondence_recall,
    query_recalls,
    random_match_recall,
)
from mtv.eval.mini import MiniData
from mtv.eval.model import FrozenModel
from mtv.world.geometry import KEYPOINT_CLASSES
from mtv.world.render import KEYPOINT_IDS, RenderedView

Sighting = tuple[int, dict[str, list[tuple[float, float]]]]  # image, class -> visible points


def sightings_by_shape(views: list[RenderedView], stride: int = 2) -> dict[str, list[Sighting]]:
    """Shape -> the images (views[::stride], index in `views`) that show it, in order, each
    with the visible keypoints of all its instances there grouped by symmetry class (classes
    the names do not cover left out)."""
    out: dict[str, list[Sighting]] = {}
    for index in range(0, len(views), stride):
        found: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for _, kp_id, x, y, visible in views[index].keypoints:
            shape, name = KEYPOINT_IDS[int(kp_id)]
            group = KEYPOINT_CLASSES[shape][name]
            if visible and group is not None:
                found.setdefault(shape, {}).setdefault(group, []).append((float(x), float(y)))
        for shape, points in found.items():
            out.setdefault(shape, []).append((index, points))
    return out


def cross_image_queries(
    sightings: dict[str, list[Sighting]], step: float, grid: int
) -> list[tuple[int, int, int, int, np.ndarray]]:
    """(source image, row, col, target image, acceptable xy (K, 2)) for every visible keypoint,
    matched into the next image that shows its shape: right on any visible keypoint of its
    class there (on any instance of the shape: nothing tells two instances' corners apart)."""
    queries = []
    for found in sightings.values():
        for (source, points), (target, targets) in itertools.pairwise(found):
            for group, spots in points.items():
                truth = targets.get(group)
                if not truth:
                    continue
                for x, y in spots:
                    row, col = min(int(y / step), grid - 1), min(int(x / step), grid - 1)
                    queries.append((source, row, col, target, np.array(truth)))
    return queries


@register_evaluator
class MiniSemanticCorrespondence(Evaluator):
    name = "semantic_correspondence"
    suites = ("mini",)
    version = 2  # across images only, symmetric keypoints matched as one class

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        features = image_features(model, data.images)
        size = data.images.shape[1]
        grid = features.patches.shape[1]
        step = size / grid
        queries = cross_image_queries(sightings_by_shape(data.views), step, grid)
        recall = query_recalls(features.patches, queries, step, (0.1 * size,))
        return {"pck@0.1": recall[f"recall@{0.1 * size:g}px"]} if recall else {}


@register_evaluator
class SpairSemanticCorrespondence(Evaluator):
    name = "semantic_correspondence"
    suites = ("spair",)

    def __call__(self, model: FrozenModel, data: KeypointPairSet) -> Scores:
        patches = image_features(model, data.images).patches
        grid = patches.shape[1]
        step = data.images.shape[1] / grid  # pixels per patch
        hits = chance = total = 0.0
        for pair in data.pairs:
            if not len(pair.source_xy):
                continue
            cells = np.minimum((pair.source_xy / step).astype(np.int64), grid - 1)
            queries = patches[pair.source, cells[:, 1], cells[:, 0]]
            recall = correspondence_recall(
                queries,
                patches[pair.target],
                torch.from_numpy(pair.target_xy / step),
                (pair.threshold / step,),
            )
            random = random_match_recall(
                (grid, grid), torch.from_numpy(pair.target_xy / step), (pair.threshold / step,)
            )
            hits += next(iter(recall.values())) * len(cells)
            chance += next(iter(random.values())) * len(cells)
            total += len(cells)
        if not total:
            return {}
        return {f"pck@{data.alpha:g}": Score(hits / total, chance / total)}
