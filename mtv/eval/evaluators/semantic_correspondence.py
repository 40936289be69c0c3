"""Semantic correspondence: keypoints of the same kind on different instances; each source
keypoint's patch feature is matched to the nearest (cosine) patch of the target image, right
when the patch centre lies within a threshold of the true keypoint. Trivial: a match drawn
uniformly among the target's patches.

- mini: keypoints of the same kind in consecutive held-out scenes, PCK@0.1 of the image side;
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


@register_evaluator
class MiniSemanticCorrespondence(Evaluator):
    name = "semantic_correspondence"
    suites = ("mini",)

    def __call__(self, model: FrozenModel, data: MiniData) -> Scores:
        features = image_features(model, data.images)
        size = data.images.shape[1]
        grid = features.patches.shape[1]
        step = size / grid
        by_kind: dict[int, list[tuple[int, float, float]]] = {}
        for index, view in enumerate(data.views[0::2]):
            for _, kp_id, x, y, visible in view.keypoints:
                if visible:
                    by_kind.setdefault(int(kp_id), []).append((2 * index, float(x), float(y)))
        queries = []
        for points in by_kind.values():
            for (a, xa, ya), (b, xb, yb) in itertools.pairwise(points):
                row, col = min(int(ya / step), grid - 1), min(int(xa / step), grid - 1)
                queries.append((a, row, col, b, np.array([xb, yb])))
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
